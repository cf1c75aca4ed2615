//! What the operator allows each account: how many workspaces and sessions, how many bytes,
//! how many forks a call, and which GitHub token its imports use. Read from the accounts file
//! (`serve --accounts-file`, TOML); a tenant can lower its own quotas but never raise these.
//!
//! ```toml
//! [defaults]                 # every account, unless its own table says otherwise
//! workspaces = 10000
//! active_sessions = 64
//! account_bytes = "1T"       # the account's workspaces together (their logical bytes)
//! workspace_bytes = "100G"   # ceiling of each workspace's byte quota
//! workspace_inodes = 10000000
//! forks_per_call = 100
//!
//! [accounts.ops]
//! operator = true            # may list every account's sessions (GET /v1/admin/sessions)
//!
//! [accounts.alice]
//! workspaces = 50
//! github_token_file = "/etc/chaserfs/alice.github-token"
//! operator_github_token = false
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::model::Quota;

/// Most workspaces one fork makes (as E2B allows): the ceiling of every account's
/// `forks_per_call`.
pub const FORK_MAX: usize = 100;

/// One account's limits, the defaults and its own table merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Most workspaces the account may hold (snapshots not counted).
    pub workspaces: u64,
    /// Most sessions mounted at once.
    pub active_sessions: u64,
    /// Most logical bytes of all its workspaces together, checked before anything adds a
    /// workspace or mounts one; a mounted session is bounded by its workspace's ceiling.
    pub account_bytes: Option<u64>,
    /// Ceiling of each workspace's quota: a tenant may set a quota only below it, and a
    /// workspace without one (or with `null`) is held to it.
    pub workspace_bytes: Option<u64>,
    pub workspace_inodes: Option<u64>,
    /// Most workspaces one fork makes.
    pub forks_per_call: usize,
    /// Token for private GitHub imports; `None` imports public repositories only.
    pub github_token: Option<String>,
    /// May see every account's sessions (`GET /v1/admin/sessions`): only an account's own
    /// table can say so, or the only account there is (`default`, without a keys file).
    pub operator: bool,
}

impl Default for Policy {
    /// Limits that protect the host when the operator wrote none: generous for one user,
    /// bounded for a hostile one.
    fn default() -> Self {
        Policy {
            workspaces: 100_000,
            active_sessions: 256,
            account_bytes: None,
            workspace_bytes: None,
            workspace_inodes: None,
            forks_per_call: FORK_MAX,
            github_token: None,
            operator: false,
        }
    }
}

impl Policy {
    /// The quota a mounted workspace is held to: the tenant's, within the operator's ceiling.
    pub fn clamp(&self, q: Quota) -> Quota {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Quota {
            bytes: min(q.bytes, self.workspace_bytes),
            inodes: min(q.inodes, self.workspace_inodes),
        }
    }

    /// Refuses a quota a tenant asks for above the operator's ceiling. A limit left out
    /// (`null`) is the ceiling itself.
    pub fn check_quota(&self, q: &Quota) -> Result<(), String> {
        let above = |asked: Option<u64>, ceiling: Option<u64>| match (asked, ceiling) {
            (Some(a), Some(c)) => a > c,
            _ => false,
        };
        if above(q.bytes, self.workspace_bytes) || above(q.inodes, self.workspace_inodes) {
            return Err(format!(
                "the operator allows this account's workspaces at most {} bytes and {} inodes",
                show(self.workspace_bytes),
                show(self.workspace_inodes)
            ));
        }
        Ok(())
    }
}

fn show(limit: Option<u64>) -> String {
    limit.map_or("unlimited".into(), |n| n.to_string())
}

/// Every account's policy.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    defaults: Policy,
    accounts: HashMap<String, Policy>,
}

impl Accounts {
    pub fn policy(&self, account: &str) -> &Policy {
        self.accounts.get(account).unwrap_or(&self.defaults)
    }

    /// Built-in defaults, or the accounts file over them. `operator_token` (the daemon's
    /// `CHASER_GITHUB_TOKEN`) goes to the accounts that ask for it with
    /// `operator_github_token = true`, and to every account when `shared` (the daemon serves
    /// only the operator's own `default` account) unless the file says otherwise.
    pub fn load(
        file: Option<&Path>,
        operator_token: Option<String>,
        shared: bool,
    ) -> Result<Accounts, String> {
        let parsed: File = match file {
            None => File::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
        };
        let token_of = |t: &Table, inherited: bool| -> Result<(Option<String>, bool), String> {
            let operator = t.operator_github_token.unwrap_or(inherited);
            if let Some(path) = &t.github_token_file {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                return Ok((Some(token.to_string()), operator));
            }
            Ok((None, operator))
        };
        if parsed.defaults.operator.is_some() {
            return Err(
                "`operator` goes in an account's own table ([accounts.NAME]), never in \
                 [defaults]: it shows every account's sessions"
                    .into(),
            );
        }
        let base = Policy {
            // The operator's own `default`, the only account there is.
            operator: shared,
            ..Policy::default()
        };
        let (default_token, default_operator) = token_of(&parsed.defaults, shared)?;
        let defaults = parsed.defaults.over(&base, default_token.clone());
        let operator = |own: Option<String>, allowed: bool| {
            own.or_else(|| operator_token.clone().filter(|_| allowed))
        };
        let mut accounts = HashMap::new();
        for (name, table) in &parsed.accounts {
            let (own, allowed) = token_of(table, default_operator)?;
            let token = operator(own.or(default_token.clone()), allowed);
            accounts.insert(name.clone(), table.over(&defaults, token));
        }
        let defaults = Policy {
            github_token: operator(default_token, default_operator),
            ..defaults
        };
        Ok(Accounts { defaults, accounts })
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Table,
    #[serde(default)]
    accounts: HashMap<String, Table>,
}

/// A `[defaults]` or `[accounts.NAME]` table: what it says overrides what is above it.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    workspaces: Option<u64>,
    active_sessions: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    account_bytes: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    workspace_bytes: Option<u64>,
    workspace_inodes: Option<u64>,
    forks_per_call: Option<usize>,
    github_token_file: Option<std::path::PathBuf>,
    operator_github_token: Option<bool>,
    operator: Option<bool>,
}

impl Table {
    fn over(&self, base: &Policy, github_token: Option<String>) -> Policy {
        Policy {
            workspaces: self.workspaces.unwrap_or(base.workspaces),
            active_sessions: self.active_sessions.unwrap_or(base.active_sessions),
            account_bytes: self.account_bytes.or(base.account_bytes),
            workspace_bytes: self.workspace_bytes.or(base.workspace_bytes),
            workspace_inodes: self.workspace_inodes.or(base.workspace_inodes),
            forks_per_call: self
                .forks_per_call
                .unwrap_or(base.forks_per_call)
                .clamp(1, FORK_MAX),
            github_token,
            operator: self.operator.unwrap_or(base.operator),
        }
    }
}

/// A byte count, or a size like "512M" or "20G".
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(s) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `512M`, `20G`, `1T` (powers of 1024) or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size like 512M or 20G"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, token: Option<&str>, shared: bool) -> Result<Accounts, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("alice.token"), "alice-tok\n").unwrap();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("DIR", dir.path().to_str().unwrap());
        std::fs::write(&path, text).unwrap();
        Accounts::load(Some(&path), token.map(String::from), shared)
    }

    #[test]
    fn tables_override_defaults_and_tokens_stay_with_their_owner() {
        let a = load(
            r#"
            [defaults]
            workspaces = 10
            workspace_bytes = "1G"
            [accounts.alice]
            workspaces = 3
            github_token_file = "DIR/alice.token"
            [accounts.ops]
            operator_github_token = true
            "#,
            Some("op-tok"),
            false,
        )
        .unwrap();
        let alice = a.policy("alice");
        assert_eq!(alice.workspaces, 3);
        assert_eq!(alice.workspace_bytes, Some(1 << 30));
        assert_eq!(alice.github_token.as_deref(), Some("alice-tok"));
        assert_eq!(a.policy("ops").github_token.as_deref(), Some("op-tok"));
        let bob = a.policy("bob");
        assert_eq!(bob.workspaces, 10);
        assert_eq!(
            bob.github_token, None,
            "no fallback to the operator's token"
        );
        assert_eq!(bob.active_sessions, Policy::default().active_sessions);
    }

    #[test]
    fn the_operator_token_serves_a_single_account_daemon() {
        let a = Accounts::load(None, Some("op".into()), true).unwrap();
        assert_eq!(a.policy("default").github_token.as_deref(), Some("op"));
        let a = Accounts::load(None, Some("op".into()), false).unwrap();
        assert_eq!(a.policy("default").github_token, None);
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(load("[defaults]\nworkspace = 3\n", None, false).is_err());
        assert!(load("[defaults]\nworkspace_bytes = \"lots\"\n", None, false).is_err());
        assert!(load(
            "[accounts.x]\ngithub_token_file = \"/nonexistent\"\n",
            None,
            false
        )
        .is_err());
    }

    #[test]
    fn quotas_within_the_ceiling() {
        let p = Policy {
            workspace_bytes: Some(100),
            ..Policy::default()
        };
        let q = |bytes| Quota {
            bytes,
            inodes: None,
        };
        assert!(p.check_quota(&q(Some(100))).is_ok());
        assert!(p.check_quota(&q(Some(101))).is_err());
        assert!(
            p.check_quota(&q(None)).is_ok(),
            "no quota of its own is the ceiling"
        );
        assert_eq!(p.clamp(q(None)).bytes, Some(100));
        assert_eq!(p.clamp(q(Some(7))).bytes, Some(7));
        assert!(Policy::default().check_quota(&q(None)).is_ok());
    }
}
