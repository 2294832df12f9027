//! Home Assistant MQTT discovery (`[mqtt] home_assistant_discovery = true`, off by default):
//! one retained `config` message per entity under `homeassistant/sensor/{object_id}/config`,
//! so a Home Assistant dashboard shows each device's model, version and health without any
//! configuration. The entities read the device's retained `status` (a JSON document) and use
//! it as their availability topic too, so the Last Will marks them unavailable.

use serde_json::{json, Value};

use super::payload::DAEMON_VERSION;
use super::topics::{Topics, HA_PREFIX};

/// One discovery message: its topic and its retained payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// `homeassistant/sensor/{object_id}/config`.
    pub topic: String,
    /// The entity configuration.
    pub payload: Value,
}

/// The entities of a device: (key, name, field of `status`, icon).
const ENTITIES: [(&str, &str, &str, &str); 4] = [
    ("model", "Model", "model", "mdi:brain"),
    ("model_version", "Model version", "model_version", "mdi:tag"),
    ("health", "Health", "health", "mdi:heart-pulse"),
    (
        "daemon_version",
        "mintd version",
        "daemon_version",
        "mdi:chip",
    ),
];

/// The discovery messages of `topics.device`.
pub fn discovery(topics: &Topics) -> Vec<Discovery> {
    // Object ids allow [a-zA-Z0-9_-]; device ids may also hold '.'.
    let node = topics.device.replace('.', "_");
    let device = json!({
        "identifiers": [format!("mintd_{node}")],
        "name": format!("mintd {}", topics.device),
        "manufacturer": "mintd",
        "model": "mintd device",
        "sw_version": DAEMON_VERSION,
    });
    let mut out: Vec<Discovery> = ENTITIES
        .iter()
        .map(|(key, name, field, icon)| {
            let object_id = format!("mintd_{node}_{key}");
            Discovery {
                topic: format!("{HA_PREFIX}/sensor/{object_id}/config"),
                payload: json!({
                    "name": name,
                    "unique_id": object_id,
                    "object_id": object_id,
                    "state_topic": topics.status(),
                    "value_template": format!("{{{{ value_json.{field} | default('none') }}}}"),
                    "availability_topic": topics.status(),
                    "availability_template": "{{ value_json.state }}",
                    "payload_available": "online",
                    "payload_not_available": "offline",
                    "icon": icon,
                    "device": device,
                }),
            }
        })
        .collect();
    let object_id = format!("mintd_{node}_online");
    out.push(Discovery {
        topic: format!("{HA_PREFIX}/binary_sensor/{object_id}/config"),
        payload: json!({
            "name": "Online",
            "unique_id": object_id,
            "object_id": object_id,
            "device_class": "connectivity",
            "state_topic": topics.status(),
            "value_template": "{{ value_json.state }}",
            "payload_on": "online",
            "payload_off": "offline",
            "device": device,
        }),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_reads_status_and_has_a_unique_id() {
        let d = discovery(&Topics::new("dev.1"));
        assert_eq!(d.len(), 5);
        let mut ids: Vec<&str> = d
            .iter()
            .map(|x| x.payload["unique_id"].as_str().unwrap())
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), 5);
        for x in &d {
            assert!(x.topic.starts_with("homeassistant/"), "{}", x.topic);
            assert!(x.topic.ends_with("/config"));
            assert!(!x.topic.contains("dev.1"), "object ids have no dots");
            assert_eq!(x.payload["state_topic"], "mint/v1/dev.1/status");
        }
        assert_eq!(
            d[2].payload["value_template"],
            "{{ value_json.health | default('none') }}"
        );
    }
}
