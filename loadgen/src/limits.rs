//! The open-file limit: every simulated user keeps its own keep-alive connection, so
//! 10,000 users need 10,000 sockets. At start the soft `RLIMIT_NOFILE` is raised to what
//! the plan needs (up to the hard limit); when even the hard limit is too low the run
//! stops before it starts, with the figures and the fix, instead of failing requests with
//! "too many open files" in the middle.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// File descriptors beyond one per user: runtime, stdio, reports, scrapes, control.
pub const HEADROOM: u64 = 256;

/// What [`ensure_open_files`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now in force (`None`: unlimited).
    pub soft: Option<u64>,
    /// Whether this call raised it.
    pub raised: bool,
}

/// The soft limit to ask for so that `needed` descriptors fit under `hard`, or why not.
/// Pure: [`ensure_open_files`] applies it.
pub fn plan_limit(
    needed: u64,
    soft: Option<u64>,
    hard: Option<u64>,
) -> Result<Option<u64>, String> {
    if soft.is_none_or(|s| s >= needed) {
        return Ok(None);
    }
    match hard {
        Some(h) if h < needed => Err(format!(
            "{needed} open files needed (one connection per user plus {HEADROOM}) but the hard \
             limit RLIMIT_NOFILE is {h}: raise it (`ulimit -Hn {needed}` as root, or LimitNOFILE= \
             in a systemd unit), or run fewer users per process (--shard i/n)"
        )),
        // Raise to the hard limit: later growth (reconnects, scrapes) needs no second call.
        _ => Ok(Some(hard.unwrap_or(needed))),
    }
}

/// Makes room for `users` concurrent users' connections.
pub fn ensure_open_files(users: u64) -> Result<OpenFiles, String> {
    let needed = users.saturating_add(HEADROOM);
    let now = getrlimit(Resource::Nofile);
    match plan_limit(needed, now.current, now.maximum)? {
        None => Ok(OpenFiles {
            soft: now.current,
            raised: false,
        }),
        Some(soft) => {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(soft),
                    maximum: now.maximum,
                },
            )
            .map_err(|e| {
                format!("cannot raise the open-file limit RLIMIT_NOFILE to {soft} for {users} users: {e}")
            })?;
            Ok(OpenFiles {
                soft: Some(soft),
                raised: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn raises_to_the_hard_limit_or_explains() {
        assert_eq!(plan_limit(10_256, Some(20_000), Some(20_000)), Ok(None));
        assert_eq!(plan_limit(10_256, None, None), Ok(None));
        assert_eq!(
            plan_limit(10_256, Some(1024), Some(524_288)),
            Ok(Some(524_288))
        );
        assert_eq!(plan_limit(10_256, Some(1024), None), Ok(Some(10_256)));
        let e = plan_limit(10_256, Some(1024), Some(4096)).unwrap_err();
        assert!(e.contains("hard limit RLIMIT_NOFILE is 4096"), "{e}");
    }

    #[test]
    fn applies_to_this_process() {
        // Within the current limits nothing changes; the soft limit then covers the users.
        let now = getrlimit(Resource::Nofile);
        let users = now
            .current
            .unwrap_or(1024)
            .saturating_sub(HEADROOM)
            .min(100);
        let got = ensure_open_files(users).unwrap();
        assert!(got.soft.is_none_or(|s| s >= users + HEADROOM));
    }
}
