//! The topic contract of DESIGN.md: everything under `mint/v1/{device_id}/`, plus the
//! broadcast command topic. One place builds every topic name so that the device, `mintctl
//! fleet` and the tests cannot disagree.

/// The topic root of protocol version 1.
pub const ROOT: &str = "mint/v1";
/// Commands to every device.
pub const FLEET_CMD: &str = "mint/v1/fleet/cmd";
/// The Home Assistant discovery prefix (its default).
pub const HA_PREFIX: &str = "homeassistant";

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The device id (one topic level, validated by the configuration).
    pub device: String,
}

impl Topics {
    /// The topics of `device`.
    pub fn new(device: &str) -> Self {
        Topics {
            device: device.to_owned(),
        }
    }

    fn topic(&self, leaf: &str) -> String {
        format!("{ROOT}/{}/{leaf}", self.device)
    }

    /// `status` (retained): online/offline, versions, uptime; the Last Will.
    pub fn status(&self) -> String {
        self.topic("status")
    }

    /// `inventory` (retained): models, attestation mode, posture.
    pub fn inventory(&self) -> String {
        self.topic("inventory")
    }

    /// `telemetry`: periodic flat metrics.
    pub fn telemetry(&self) -> String {
        self.topic("telemetry")
    }

    /// `events`: lifecycle and security events.
    pub fn events(&self) -> String {
        self.topic("events")
    }

    /// `cmd` (in): commands to this device.
    pub fn cmd(&self) -> String {
        self.topic("cmd")
    }

    /// `cmd/result`: the outcome of each command.
    pub fn cmd_result(&self) -> String {
        self.topic("cmd/result")
    }
}

/// The device id and leaf of a device topic (`mint/v1/{id}/{leaf}`), or `None` for any other
/// topic (the broadcast topic included).
pub fn parse(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (device, leaf) = rest.split_once('/')?;
    if device.is_empty() || device == "fleet" || leaf.is_empty() {
        return None;
    }
    Some((device, leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_contract() {
        let t = Topics::new("dev-1");
        assert_eq!(t.status(), "mint/v1/dev-1/status");
        assert_eq!(t.inventory(), "mint/v1/dev-1/inventory");
        assert_eq!(t.telemetry(), "mint/v1/dev-1/telemetry");
        assert_eq!(t.events(), "mint/v1/dev-1/events");
        assert_eq!(t.cmd(), "mint/v1/dev-1/cmd");
        assert_eq!(t.cmd_result(), "mint/v1/dev-1/cmd/result");
    }

    #[test]
    fn parse_names_device_and_leaf_and_refuses_the_rest() {
        assert_eq!(parse("mint/v1/d/status"), Some(("d", "status")));
        assert_eq!(parse("mint/v1/d/cmd/result"), Some(("d", "cmd/result")));
        for bad in [
            "mint/v1/fleet/cmd",
            "mint/v1/d",
            "mint/v1//status",
            "mint/v2/d/status",
            "mint/v1d/status",
            "",
            "homeassistant/sensor/x/config",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
