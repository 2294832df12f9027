//! Who is calling: peer credentials of a Unix-socket connection or the address of a loopback
//! TCP connection, and whether they may manage the daemon.

use std::fmt;
use std::fs;
use std::net::SocketAddr;

use super::guard::PeerKey;

/// The other end of a connection, by listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A process on the Unix socket, with its credentials.
    Local(Peer),
    /// A client of the opt-in loopback TCP listener (`api.tcp`): only its address is known,
    /// so it may infer but never manage.
    Tcp(SocketAddr),
}

impl Caller {
    /// Whose rate limit a request counts against: the uid on the socket, the IP address (not
    /// the port) on TCP.
    pub fn rate_key(&self) -> PeerKey {
        match self {
            Caller::Local(peer) => PeerKey::Uid(peer.uid),
            Caller::Tcp(addr) => PeerKey::Addr(addr.ip()),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Local(peer) => write!(f, "uid {}", peer.uid),
            Caller::Tcp(addr) => write!(f, "tcp {addr}"),
        }
    }
}

/// Credentials of the process at the other end of the socket (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id, when the kernel reports it.
    pub pid: Option<i32>,
}

/// Who may call the management endpoints (`/v1/...`).
#[derive(Debug, Clone)]
pub struct AdminPolicy {
    /// The daemon's own uid (a process of the same user may manage it).
    pub own_uid: u32,
    /// A group whose members may manage the daemon (`api.admin_group`), resolved at start.
    pub admin_gid: Option<u32>,
}

impl AdminPolicy {
    /// Builds the policy, resolving `admin_group` by name.
    pub fn new(admin_group: Option<&str>) -> Result<Self, String> {
        let admin_gid = match admin_group {
            None => None,
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .map_err(|e| format!("cannot look up api.admin_group {name:?}: {e}"))?
                    .ok_or_else(|| format!("api.admin_group {name:?} does not exist"))?
                    .gid
                    .as_raw(),
            ),
        };
        Ok(AdminPolicy {
            own_uid: nix::unistd::geteuid().as_raw(),
            admin_gid,
        })
    }

    /// Root, the daemon's own user, or a member (primary or supplementary) of the admin group.
    pub fn is_admin(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return true;
        }
        let Some(gid) = self.admin_gid else {
            return false;
        };
        peer.gid == gid
            || peer
                .pid
                .is_some_and(|pid| supplementary_groups(pid).contains(&gid))
    }
}

/// Supplementary groups of a live process, from `/proc/PID/status` (SO_PEERCRED only gives
/// the primary group). A process that is gone has none.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_own_user_are_admins_others_are_not() {
        let policy = AdminPolicy {
            own_uid: 1000,
            admin_gid: Some(4242),
        };
        let peer = |uid, gid| Peer {
            uid,
            gid,
            pid: None,
        };
        assert!(policy.is_admin(&peer(0, 0)));
        assert!(policy.is_admin(&peer(1000, 1000)));
        assert!(policy.is_admin(&peer(2000, 4242)));
        assert!(!policy.is_admin(&peer(2000, 2000)));
        let none = AdminPolicy {
            own_uid: 1000,
            admin_gid: None,
        };
        assert!(!none.is_admin(&peer(2000, 4242)));
    }

    #[test]
    fn callers_key_their_rate_limit_by_uid_or_address() {
        let local = Caller::Local(Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(7),
        });
        assert_eq!(local.rate_key(), PeerKey::Uid(1000));
        assert_eq!(local.to_string(), "uid 1000");
        let a = Caller::Tcp("127.0.0.1:40000".parse().unwrap());
        let b = Caller::Tcp("127.0.0.1:40001".parse().unwrap());
        assert_eq!(
            a.rate_key(),
            b.rate_key(),
            "the port is not part of the peer"
        );
        assert_eq!(a.rate_key(), PeerKey::Addr("127.0.0.1".parse().unwrap()));
        assert_eq!(a.to_string(), "tcp 127.0.0.1:40000");
    }

    #[test]
    fn supplementary_groups_of_this_process_are_read() {
        let own: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let read = supplementary_groups(std::process::id() as i32);
        for g in own {
            assert!(read.contains(&g), "{g} missing from {read:?}");
        }
    }
}
