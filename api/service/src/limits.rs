//! What the operator allows each account, applied: quotas within the operator's ceiling, the
//! workspaces and bytes an account may add, and the sessions it may mount at once.

use chaserfs_engine::{roots, RootId};

use crate::accounts::Policy;
use crate::error::{ApiError, ApiResult, ErrorKind};
use crate::index::Index;
use crate::model::{Quota, SessionStatus, WorkspaceRecord};
use crate::service::Service;

impl Service {
    /// What the operator allows `account`.
    pub(crate) fn policy(&self, account: &str) -> &Policy {
        self.config.accounts.policy(account)
    }

    /// What a mounted workspace (a session, an import) is held to: its quota within the
    /// operator's ceiling, and its bytes within what its account has left now. Sessions of one
    /// account mounted at once may each use that headroom, so the account can pass its limit
    /// by at most that much per session.
    pub(crate) fn limits_of(
        &self,
        ix: &Index,
        rec: &WorkspaceRecord,
    ) -> ApiResult<chaserfs_engine::Limits> {
        let mut quota = self.policy(&rec.account).clamp(rec.quota);
        if let Some(left) = self.account_bytes_left(ix, &rec.account)? {
            let used = match roots::stats(&self.store, RootId::Workspace(rec.id)) {
                Ok((_, sup)) => sup.used_bytes(),
                Err(chaserfs_engine::FsError::NotFound) => 0,
                Err(e) => return Err(e.into()),
            };
            let cap = used.saturating_add(left);
            quota.bytes = Some(quota.bytes.map_or(cap, |b| b.min(cap)));
        }
        Ok(quota.into())
    }

    /// Refuses a quota a tenant asks for above the operator's ceiling.
    pub(crate) fn check_quota(&self, account: &str, quota: Option<&Quota>) -> ApiResult<()> {
        match quota.map(|q| self.policy(account).check_quota(q)) {
            Some(Err(why)) => Err(ApiError::forbidden("quota_above_limit", why)),
            _ => Ok(()),
        }
    }

    /// Refuses `count` more workspaces holding `bytes` more logical bytes beyond what the
    /// operator allows the account.
    pub(crate) fn check_room(
        &self,
        ix: &Index,
        account: &str,
        count: usize,
        bytes: u64,
    ) -> ApiResult<()> {
        let policy = self.policy(account);
        let (held, _) = ix.held_by(account);
        if held + count as u64 > policy.workspaces {
            return Err(ApiError::forbidden(
                "account_limit",
                format!(
                    "the account holds {held} workspaces; the operator allows it {}",
                    policy.workspaces
                ),
            ));
        }
        if let Some(left) = self.account_bytes_left(ix, account)? {
            if bytes > left || left == 0 {
                return Err(ApiError::forbidden(
                    "account_limit",
                    format!(
                        "the account's workspaces hold {} of the {} bytes the operator \
                         allows it",
                        policy.account_bytes.unwrap_or(0) - left,
                        policy.account_bytes.unwrap_or(0)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Bytes the account may still add, by its workspaces' last commits and its snapshots;
    /// `None` (and nothing read) when the operator set no limit on the account's bytes.
    pub(crate) fn account_bytes_left(&self, ix: &Index, account: &str) -> ApiResult<Option<u64>> {
        let Some(limit) = self.policy(account).account_bytes else {
            return Ok(None);
        };
        let mut used = 0u64;
        for w in ix.workspaces.values().filter(|w| w.account == account) {
            match roots::stats(&self.store, RootId::Workspace(w.id)) {
                Ok((_, sup)) => used = used.saturating_add(sup.used_bytes()),
                Err(chaserfs_engine::FsError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            for snap in ix.snapshots.get(&w.id).into_iter().flatten() {
                used = used.saturating_add(snap.logical_bytes + snap.metadata_bytes);
            }
        }
        Ok(Some(limit.saturating_sub(used)))
    }

    /// Refuses a mount (a session, a GitHub import) beyond the account's active sessions, or,
    /// when it can write (`writes`), while its workspaces hold all the bytes the operator
    /// allows it.
    pub(crate) fn check_session_room(
        &self,
        ix: &Index,
        account: &str,
        writes: bool,
    ) -> ApiResult<()> {
        let allowed = self.policy(account).active_sessions;
        let sessions = ix
            .sessions
            .values()
            .filter(|s| s.account == account && s.status == SessionStatus::Active)
            .count();
        let (_, imports) = ix.held_by(account);
        let active = sessions as u64 + imports;
        if active >= allowed {
            return Err(ApiError::new(
                ErrorKind::TooManyRequests,
                "too_many_sessions",
                format!("the account has {active} active sessions; the operator allows {allowed}"),
            ));
        }
        if writes && self.account_bytes_left(ix, account)? == Some(0) {
            return Err(ApiError::forbidden(
                "account_limit",
                "the account's workspaces hold all the bytes the operator allows it",
            ));
        }
        Ok(())
    }
}
