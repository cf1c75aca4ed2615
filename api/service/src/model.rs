//! What the service stores (records, JSON in RocksDB's `meta` column family), what it serves
//! (views, which never carry the owning account) and what it accepts (requests). The schemas
//! of the OpenAPI document are derived from these types.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// [`crate::names::NAME_RULE`] as a regular expression, for the OpenAPI document (the
/// service checks names in code).
pub const NAME_PATTERN: &str =
    r"^(?!\.\.?$)[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]*[^\s/\x00-\x1f\x7f-\x9f])?$";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionType {
    Browser,
    Sandbox,
}

/// `importing` while a GitHub import runs, then `ready` or `failed` (see `import_error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceStatus {
    Importing,
    Ready,
    Failed,
}

/// Optional limits of a workspace, enforced inside its sessions: writes past them answer
/// EDQUOT, and `df` in a session shows them as the filesystem's size. `bytes` counts logical
/// bytes (the sum of file sizes): a chunk shared with another workspace counts in each.
/// `null` (or absent) is no limit. Clones inherit their source's quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Quota {
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub bytes: Option<u64>,
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub inodes: Option<u64>,
}

/// What a quota object may hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFields {
    #[serde(default, deserialize_with = "json_int")]
    bytes: Option<u64>,
    #[serde(default, deserialize_with = "json_int")]
    inodes: Option<u64>,
}

impl<'de> Deserialize<'de> for Quota {
    /// From a JSON object only: a derived struct would also take `[bytes, inodes]`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let object = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let f: QuotaFields = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(serde::de::Error::custom)?;
        Ok(Quota {
            bytes: f.bytes,
            inodes: f.inodes,
        })
    }
}

/// A limit as the schema states it (`int64`, not negative): larger numbers are refused
/// rather than kept in a form other JSON readers would round.
fn json_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        Some(n) if n > i64::MAX as u64 => Err(serde::de::Error::custom(
            "a limit is at most 9223372036854775807",
        )),
        v => Ok(v),
    }
}

impl From<Quota> for chaserfs_engine::Limits {
    fn from(q: Quota) -> Self {
        chaserfs_engine::Limits {
            bytes: q.bytes,
            inodes: q.inodes,
        }
    }
}

/// The time now as records carry it: RFC 3339, to the millisecond.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A committed state's time as views carry it.
pub(crate) fn rfc3339(t: chaserfs_engine::Timespec) -> String {
    humantime::format_rfc3339_millis(t.to_system_time()).to_string()
}

/// A workspace as stored under `W` + id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    pub id: Uuid,
    pub account: String,
    pub name: Option<String>,
    pub session_type: SessionType,
    pub image: Option<String>,
    pub template: bool,
    pub status: WorkspaceStatus,
    pub active_session_id: Option<Uuid>,
    pub last_session_id: Option<Uuid>,
    #[serde(default)]
    pub cloned_from: Option<Uuid>,
    #[serde(default)]
    pub github_repo: Option<String>,
    #[serde(default)]
    pub import_error: Option<String>,
    #[serde(default)]
    pub quota: Quota,
    pub created_at: String,
    pub updated_at: String,
}

impl WorkspaceRecord {
    /// A new ready workspace record with a fresh id and no sessions.
    pub fn new(
        account: &str,
        name: String,
        session_type: SessionType,
        image: Option<String>,
        template: bool,
    ) -> WorkspaceRecord {
        let t = now();
        WorkspaceRecord {
            id: Uuid::now_v7(),
            account: account.to_string(),
            name: Some(name),
            session_type,
            image,
            template,
            status: WorkspaceStatus::Ready,
            active_session_id: None,
            last_session_id: None,
            cloned_from: None,
            github_repo: None,
            import_error: None,
            quota: Quota::default(),
            created_at: t.clone(),
            updated_at: t,
        }
    }
}

/// A snapshot as stored under `P` + id and as served. Its state never changes, so its
/// figures are kept.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Snapshot)]
pub struct SnapshotRecord {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub name: String,
    /// BLAKE3 root of the snapshot's tree.
    pub root_hash: String,
    pub files: u64,
    pub logical_bytes: u64,
    /// Entry names, symlink targets and xattrs (0 for snapshots taken before it was kept).
    #[serde(default)]
    pub metadata_bytes: u64,
    pub created_at: String,
}

/// A session as stored under `S` + id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: Uuid,
    pub account: String,
    pub workspace_id: Uuid,
    pub mountpoint: PathBuf,
    pub status: SessionStatus,
    pub created_at: String,
    pub ended_at: Option<String>,
    #[serde(default)]
    pub commit_error: Option<String>,
    /// Whether the mount serves extended attributes (records before the option: off).
    #[serde(default)]
    pub xattrs: bool,
    /// Cluster mode: the host serving the mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A read-only session of this snapshot (of `workspace_id`) instead of the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<Uuid>,
    /// The daemon made the mountpoint directory: it removes it when the session ends.
    #[serde(default)]
    pub made_mountpoint: bool,
}

impl SessionRecord {
    /// What the session holds open: its snapshot, or its workspace.
    pub fn held_id(&self) -> Uuid {
        self.snapshot_id.unwrap_or(self.workspace_id)
    }
}

/// `active` while mounted; `ended` once unmounted and committed. `commit_failed`: unmounted,
/// but the final commit failed (see `commit_error`); the daemon keeps the changes in memory
/// and the workspace locked, and retries on every `DELETE` of the session and periodically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Active,
    Ended,
    CommitFailed,
}

/// What `POST /v1/workspaces/{workspace}/warm` fetched onto this host.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WarmView {
    pub workspace_id: Uuid,
    /// `false` on a single host, where everything is local and nothing is fetched.
    pub cluster: bool,
    /// Tree nodes of the committed state (its whole namespace), now on this host.
    pub nodes: u64,
    /// Chunks of its most recently modified files now on this host (at most half the
    /// host's object cache), and their bytes.
    pub chunks: u64,
    pub chunk_bytes: u64,
}

/// A workspace as served.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Workspace)]
pub struct WorkspaceView {
    pub id: Uuid,
    /// Unique in the account, case-insensitively; `null` once cleared.
    pub name: Option<String>,
    pub session_type: SessionType,
    pub status: WorkspaceStatus,
    /// OCI image (sandbox workspaces only).
    pub image: Option<String>,
    pub template: bool,
    pub active_session_id: Option<Uuid>,
    pub last_session_id: Option<Uuid>,
    /// The workspace this one was cloned from, if any.
    pub cloned_from: Option<Uuid>,
    /// `owner/repo` of a GitHub import.
    pub github_repo: Option<String>,
    /// Why an import failed.
    pub import_error: Option<String>,
    pub quota: Quota,
    pub persistence: Persistence,
}

/// The committed filesystem state of a workspace.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Persistence {
    /// BLAKE3 root of the workspace's tree: equal roots, equal contents.
    pub root_hash: String,
    /// Commits since the state was created (clones and snapshots carry it over).
    pub generation: u64,
    /// Files, directories and other inodes, the root directory included.
    pub files: u64,
    /// Sum of regular-file sizes.
    pub logical_bytes: u64,
    /// Entry names, symlink targets and extended attributes. A bytes quota counts these
    /// with `logical_bytes`.
    pub metadata_bytes: u64,
    pub last_commit_at: String,
    pub snapshot_count: u64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Session)]
pub struct SessionView {
    pub id: Uuid,
    pub workspace_id: Uuid,
    #[schema(value_type = String)]
    pub mountpoint: PathBuf,
    pub status: SessionStatus,
    pub created_at: String,
    pub ended_at: Option<String>,
    /// Why the final commit failed, while `status` is `commit_failed`.
    pub commit_error: Option<String>,
    /// Whether the mount serves extended attributes.
    pub xattrs: bool,
    /// The snapshot mounted read-only, for a snapshot's session.
    pub snapshot_id: Option<Uuid>,
    /// A snapshot's session: every change answers EROFS.
    pub read_only: bool,
    /// Cluster mode: the host serving the session (its `--host-name`); null on a single host.
    pub host: Option<String>,
}

impl From<&SessionRecord> for SessionView {
    fn from(s: &SessionRecord) -> Self {
        SessionView {
            id: s.id,
            workspace_id: s.workspace_id,
            mountpoint: s.mountpoint.clone(),
            status: s.status,
            created_at: s.created_at.clone(),
            ended_at: s.ended_at.clone(),
            commit_error: s.commit_error.clone(),
            xattrs: s.xattrs,
            snapshot_id: s.snapshot_id,
            read_only: s.snapshot_id.is_some(),
            host: s.host.clone(),
        }
    }
}

// ---- requests ----

/// `GET /v1/workspaces` filters and page.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only templates (`true`) or only non-templates (`false`).
    pub template: Option<bool>,
    pub session_type: Option<SessionType>,
    pub status: Option<WorkspaceStatus>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `POST /v1/workspaces`: fresh (`session_type` given) or cloned (`clone_from` given).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Required for a fresh workspace; a clone inherits its source's.
    pub session_type: Option<SessionType>,
    /// Auto-generated when omitted.
    #[schema(schema_with = name_schema)]
    pub name: Option<String>,
    /// OCI image, sandbox only; a clone inherits its source's.
    #[schema(min_length = 1, max_length = 512)]
    pub image: Option<String>,
    #[serde(default)]
    pub template: bool,
    /// Selector (name or id) of the workspace to clone.
    #[schema(min_length = 1)]
    pub clone_from: Option<String>,
    /// Limits; a clone inherits its source's unless this is given.
    pub quota: Option<Quota>,
}

/// `POST /v1/workspaces/{workspace}/clone`: fork N.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkWorkspace {
    /// How many clones, 1 to 100 (default 1).
    #[schema(minimum = 1, maximum = 100)]
    pub count: Option<usize>,
    /// Name prefix, at most 56 characters: the clones are named PREFIX-1, PREFIX-2, ...
    /// (the lowest numbers free). Defaults to the source's name.
    #[schema(schema_with = fork_prefix_schema)]
    pub name: Option<String>,
    #[serde(default)]
    pub template: bool,
    /// Limits; the clones inherit the source's unless this is given.
    pub quota: Option<Quota>,
}

fn fork_prefix_schema() -> utoipa::openapi::schema::Object {
    optional_name_schema(56)
}

/// `GET /v1/workspaces/{workspace}/diff`: what changed from one state to another.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceDiff {
    /// Root hashes of the two states compared.
    pub from_root: String,
    pub to_root: String,
    /// In path order: a directory's entries by name, each directory before its contents.
    pub changes: Vec<PathChange>,
    /// More changes follow: ask again with `cursor` set to `next_cursor`.
    pub truncated: bool,
    /// Where the next page starts; `null` on the last page. Bound to the two states: a
    /// cursor for `current` stops working once the workspace commits again.
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PathChange {
    /// From the workspace's root (`/`); names that are not UTF-8 are shown lossily.
    pub path: String,
    pub change: ChangeKind,
    /// `file`, `directory`, `symlink`, `fifo`, `socket`, `char_device` or `block_device`.
    pub kind: String,
    /// Bytes, in `to` (in `from` for a removed path).
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

/// `GET /v1/workspaces/{workspace}/diff` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// A snapshot (name or id), or `current`: the workspace's last commit.
    pub from: String,
    /// As `from`; default `current`.
    pub to: Option<String>,
    /// Most changes listed, 1 to 100000 (default 10000). A page also ends after about
    /// 16 MiB of paths.
    #[param(minimum = 1, maximum = 100000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `POST /v1/workspaces/import`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportWorkspace {
    /// `owner/repo` on the daemon's GitHub base URL.
    #[schema(example = "octocat/Hello-World")]
    pub github_repo: String,
    /// Defaults to the repository's name when that is free, else auto-generated.
    #[schema(schema_with = name_schema)]
    pub name: Option<String>,
    /// Defaults to `sandbox`.
    pub session_type: Option<SessionType>,
    #[schema(min_length = 1, max_length = 512)]
    pub image: Option<String>,
    #[serde(default)]
    pub template: bool,
    /// Limits, enforced while the import writes too.
    pub quota: Option<Quota>,
}

/// `GET /v1/workspaces/{workspace}/archive` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArchiveQuery {
    /// A snapshot (name or id); without it, the workspace's last commit.
    pub snapshot: Option<String>,
    /// `tar` (default) or `tar.zst`.
    pub format: Option<ArchiveFormat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
pub enum ArchiveFormat {
    #[serde(rename = "tar")]
    Tar,
    #[serde(rename = "tar.zst")]
    TarZst,
}

/// `POST /v1/workspaces/import` with a tar body: the new workspace's fields, in the query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArchiveImport {
    /// Auto-generated when absent.
    pub name: Option<String>,
    /// Defaults to `sandbox`.
    pub session_type: Option<SessionType>,
    pub image: Option<String>,
    #[serde(default)]
    pub template: bool,
}

/// `PUT /v1/workspaces/{workspace}/name`: a string sets the name, `null` clears it. The
/// field must be present, so that a forgotten field is an error rather than a silent clear.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetName {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
}

/// The schema of an optional workspace or snapshot name.
fn name_schema() -> utoipa::openapi::schema::Object {
    optional_name_schema(64)
}

fn optional_name_schema(max_length: usize) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .min_length(Some(1))
        .max_length(Some(max_length))
        .pattern(Some(NAME_PATTERN))
        .build()
}

// Written out: derived schemas cannot say "required but nullable" for this field.
impl utoipa::PartialSchema for SetName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder};
        ObjectBuilder::new()
            .property("name", name_schema())
            .required("name")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for SetName {}

/// Marks a field that was given (even as `null`) as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `PUT /v1/workspaces/{workspace}/template`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTemplate {
    pub template: bool,
}

/// `POST /v1/workspaces/{workspace}/snapshots`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Unique in the workspace, case-insensitively; auto-generated when omitted.
    #[schema(schema_with = name_schema)]
    pub name: Option<String>,
    /// End an active session first (commit, unmount) instead of answering 409.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/workspaces/{workspace}/snapshots/{name}/restore`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshot {
    /// End an active session first (commit, unmount) instead of answering 409.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/workspaces/bulk-delete`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDelete {
    /// Selectors (ids or names), at most 1000.
    pub workspace_ids: Vec<String>,
    #[serde(default)]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    Busy,
    Error,
}

/// One selector's result in a bulk delete.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkDeleteResult {
    /// The selector as given.
    pub workspace: String,
    /// The workspace it resolved to, if it did.
    pub id: Option<Uuid>,
    pub status: DeleteOutcome,
    pub error: Option<ErrorBody>,
}

/// `GET /v1/sessions` filter and page.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// Only sessions in this status.
    pub status: Option<SessionStatus>,
    /// Only sessions of this workspace (name or id; the id of a deleted one also works).
    pub workspace: Option<String>,
    /// Cluster mode: only sessions this host serves (its `--host-name`).
    pub host: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/admin/sessions` filters and page.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdminSessionQuery {
    /// Only this account's sessions.
    pub account: Option<String>,
    /// Only sessions in this status.
    pub status: Option<SessionStatus>,
    /// Only sessions of this workspace (its id: names are per account).
    pub workspace_id: Option<Uuid>,
    /// Cluster mode: only sessions this host serves (its `--host-name`).
    pub host: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A session in the operator's view: with its account.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = AdminSession)]
pub struct AdminSessionView {
    pub account: String,
    #[serde(flatten)]
    pub session: SessionView,
}

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// Selector (name or id) of the workspace to mount.
    pub workspace: String,
    /// Absolute path under the daemon's mount root or /workspace; created if missing, must
    /// be empty.
    #[schema(example = "/workspace")]
    pub mountpoint: String,
    /// Serve extended attributes (default `false`: xattr calls answer EOPNOTSUPP). With them
    /// on, every `write(2)` costs the kernel an extra round trip to the daemon.
    #[serde(default)]
    pub xattrs: bool,
    /// Mount this snapshot (name or id) of the workspace instead, read-only: writes answer
    /// EROFS. Allowed while the workspace has a session of its own; one session per snapshot.
    #[schema(min_length = 1)]
    pub snapshot: Option<String>,
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, such as `workspace_not_found` or `workspace_name_ambiguous`.
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}
