//! Workspaces as tar archives over the API: `GET .../archive` streams one committed state
//! (the workspace's last commit or a snapshot) as tar or tar.zst, and a tar upload to
//! `POST /v1/workspaces/import` becomes a new workspace. The format work is the engine's
//! (`chaserfs_engine::ops::archive`); this file moves bytes between it and HTTP with bounded buffers.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chaserfs_engine::ops::archive::{self, ArchiveError};
use chaserfs_engine::{roots, FsError, Hash, RootId, Store, Workspace};
use tokio::sync::mpsc;

use crate::error::{ApiError, ApiResult};
use crate::index::{put, WORKSPACE};
use crate::model::*;
use crate::names::check_image;
use crate::service::Service;

/// The archive's bytes go out in pieces of this size, at most `QUEUE` of them waiting.
const PIECE: usize = 256 * 1024;
pub const QUEUE: usize = 8;
/// An import commits after this many bytes, so its overlay stays bounded.
const IMPORT_COMMIT_BYTES: u64 = 256 << 20;
/// Largest zstd window an upload may ask for: what `zstd -19` uses. A decoder holds its
/// window in memory, and a frame header of a few bytes can ask for gigabytes.
pub const ZSTD_MAX_WINDOW: u64 = 8 << 20;

/// How long a client may send or take nothing before its import or export is cut off.
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One archive import or export under way; gives its place back when dropped. Each streams
/// on a thread of its own for as long as its client takes, so they are capped: in all, and
/// per account, so one tenant cannot take every place.
pub struct StreamSlot {
    svc: Arc<Service>,
    account: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.svc.streams.lock();
        if let Some(n) = streams.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.account);
            }
        }
    }
}

impl Service {
    /// A place for one more archive stream of `account`, or 429.
    pub fn stream_slot(self: &Arc<Self>, account: &str) -> ApiResult<StreamSlot> {
        let max = self.config.max_archive_streams.max(1);
        let per_account = (max / 4).max(1);
        let mut streams = self.streams.lock();
        let total: usize = streams.values().sum();
        let mine = streams.get(account).copied().unwrap_or(0);
        if total >= max || mine >= per_account {
            return Err(ApiError::new(
                crate::error::ErrorKind::TooManyRequests,
                "too_many_streams",
                format!(
                    "at most {max} archive imports and exports run at once, {per_account} per \
                     account; retry when one has finished"
                ),
            ));
        }
        *streams.entry(account.to_string()).or_default() += 1;
        Ok(StreamSlot {
            svc: self.clone(),
            account: account.to_string(),
        })
    }
}

/// A committed state held for an export: its tree is pinned against collection until drop.
pub struct ArchiveSource {
    pub view: Workspace,
    /// For the download's file name.
    pub name: String,
    store: Arc<Store>,
    root: Hash,
}

impl Drop for ArchiveSource {
    fn drop(&mut self) {
        self.store.unpin([self.root]);
    }
}

/// The writer an export fills: full pieces go to the HTTP body; a reader that went away
/// makes writes fail, which stops the export.
pub struct BodyWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl BodyWriter {
    pub fn new(tx: mpsc::Sender<Result<Bytes, std::io::Error>>) -> Self {
        BodyWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        }
    }

    /// Runs on a blocking thread of the runtime; a client that takes nothing for
    /// [`STALL_TIMEOUT`] counts as gone.
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.send_within_timeout(Ok(piece))
    }

    fn send_within_timeout(&self, item: Result<Bytes, std::io::Error>) -> std::io::Result<()> {
        let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away");
        let tx = &self.tx;
        tokio::runtime::Handle::current()
            .block_on(async { tokio::time::timeout(STALL_TIMEOUT, tx.send(item)).await })
            .map_err(|_| gone())?
            .map_err(|_| gone())
    }

    /// Ends the body with an error, so the client sees a cut transfer, not a short archive.
    pub fn fail(self, e: String) {
        let _ = self.send_within_timeout(Err(std::io::Error::other(e)));
    }
}

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Writes the tar of `src` to `out`, zstd-compressed if `zst`.
pub fn write_archive(src: &ArchiveSource, mut out: BodyWriter, zst: bool) {
    let result = if zst {
        compress_export(src, &mut out)
    } else {
        archive::export(&src.view, &mut out).map(|_| ())
    };
    match result {
        Ok(()) => {}
        Err(ArchiveError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            tracing::warn!("archive of {}: {e}", src.name);
            out.fail(e.to_string());
        }
    }
}

/// The encoder reads what it compresses, so the export writes into a pipe that it reads on
/// this thread. When the client goes away the encoder is shown the end of its input, and
/// the export then fails on the closed pipe.
fn compress_export(src: &ArchiveSource, out: &mut BodyWriter) -> Result<(), ArchiveError> {
    let (reader, writer) = std::io::pipe().map_err(ArchiveError::Io)?;
    let gone = AtomicBool::new(false);
    std::thread::scope(|s| {
        let export = s.spawn(|| {
            let mut w = writer;
            let r = archive::export(&src.view, &mut w);
            drop(w);
            r
        });
        let source = UntilGone {
            inner: reader,
            gone: &gone,
        };
        let drain = Drain {
            inner: &mut *out,
            gone: &gone,
        };
        let mut enc =
            ruzstd::encoding::FrameCompressor::new(ruzstd::encoding::CompressionLevel::Fastest);
        enc.set_source(source);
        enc.set_drain(drain);
        enc.compress();
        // The encoder's source must close before the export can see a closed pipe.
        drop(enc);
        let exported = export.join().expect("export thread");
        if gone.load(Ordering::SeqCst) {
            return Err(ArchiveError::Io(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client went away",
            )));
        }
        exported?;
        out.flush().map_err(ArchiveError::Io)
    })
}

struct UntilGone<'a, R> {
    inner: R,
    gone: &'a AtomicBool,
}

impl<R: Read> Read for UntilGone<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.gone.load(Ordering::SeqCst) {
            return Ok(0);
        }
        self.inner.read(buf)
    }
}

/// The encoder's output; it cannot take a write error, so a failure is noted instead.
struct Drain<'a, W> {
    inner: W,
    gone: &'a AtomicBool,
}

impl<W: Write> Write for Drain<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if !self.gone.load(Ordering::SeqCst) && self.inner.write_all(data).is_err() {
            self.gone.store(true, Ordering::SeqCst);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Service {
    /// The committed state to export: the workspace's last commit, or one of its snapshots.
    pub fn archive_source(
        &self,
        account: &str,
        selector: &str,
        snapshot: Option<&str>,
    ) -> ApiResult<ArchiveSource> {
        let (id, name) = {
            let mut ix = self.lock();
            let ws = self.resolve_settled(&mut ix, account, selector)?;
            let base = ws.name.clone().unwrap_or_else(|| ws.id.to_string());
            match snapshot {
                Some(s) => {
                    let snap = ix.find_snapshot(&ws, s)?;
                    let label = snap.name.clone();
                    (RootId::Snapshot(snap.id), format!("{base}-{label}"))
                }
                None => (RootId::Workspace(ws.id), base),
            }
        };
        // Pin, then check the pointer still names the pinned tree: a collection that began
        // before the pin then marked it from the pointer, and one after it keeps the pin.
        loop {
            let root = self
                .store
                .get_root(id)?
                .ok_or_else(|| ApiError::not_found("workspace_not_found", "deleted meanwhile"))?
                .root;
            self.store.pin([root]);
            if self.store.get_root(id)?.map(|r| r.root) == Some(root) {
                let view = Workspace::at_root(self.store.clone(), root).inspect_err(|_| {
                    self.store.unpin([root]);
                })?;
                return Ok(ArchiveSource {
                    view,
                    name,
                    store: self.store.clone(),
                    root,
                });
            }
            self.store.unpin([root]);
        }
    }

    /// A new workspace holding what the tar archive `input` holds (zstd-compressed if
    /// `zst`), ready when this returns; an invalid archive leaves nothing behind.
    pub fn import_archive(
        &self,
        account: &str,
        req: ArchiveImport,
        input: impl Read,
        zst: bool,
    ) -> ApiResult<WorkspaceView> {
        let session_type = req.session_type.unwrap_or(SessionType::Sandbox);
        check_image(&req.image, session_type)?;
        let rec = {
            let mut ix = self.lock();
            self.check_room(&ix, account, 1, 0)?;
            let name = match req.name {
                Some(n) => ix.name_for(account, Some(n))?,
                None => ix.pick_name(account, None),
            };
            let rec = WorkspaceRecord {
                status: WorkspaceStatus::Importing,
                ..WorkspaceRecord::new(account, name, session_type, req.image, req.template)
            };
            roots::create_workspace(&self.store, rec.id, &[put(WORKSPACE, rec.id, &rec)])?;
            ix.put_workspace(rec.clone());
            rec
        };
        let started = std::time::Instant::now();
        let filled = self.fill_from_archive(rec.id, input, zst);
        let result = if filled.is_ok() { "ready" } else { "failed" };
        metrics::histogram!(crate::metrics::IMPORT_SECONDS, "result" => result)
            .record(started.elapsed().as_secs_f64());
        let mut ix = self.lock();
        match filled {
            Ok(report) => {
                tracing::info!(
                    "archive import into {}: {} entries, {} bytes in {:?}",
                    rec.id,
                    report.entries,
                    report.bytes,
                    started.elapsed()
                );
                let mut done = ix.workspaces.get(&rec.id).cloned().unwrap_or(rec);
                done.status = WorkspaceStatus::Ready;
                done.updated_at = now();
                self.store.meta_write(&[put(WORKSPACE, done.id, &done)])?;
                ix.put_workspace(done.clone());
                drop(ix);
                self.view(&done, 0)
            }
            Err(e) => {
                let meta = [(crate::index::key(WORKSPACE, rec.id), None)];
                if let Err(d) = roots::delete(&self.store, &[RootId::Workspace(rec.id)], &meta) {
                    tracing::error!("removing the failed import {}: {d}", rec.id);
                } else {
                    ix.remove_workspace(rec.id);
                }
                drop(ix);
                self.wake_gc();
                Err(e)
            }
        }
    }

    fn fill_from_archive(
        &self,
        id: uuid::Uuid,
        input: impl Read,
        zst: bool,
    ) -> ApiResult<archive::ArchiveReport> {
        let ws = Workspace::open(self.store.clone(), id)?;
        // Held to the operator's limits like a session: the import is the tenant's writing.
        {
            let ix = self.lock();
            if let Some(rec) = ix.workspaces.get(&id) {
                ws.set_limits(self.limits_of(&ix, rec)?);
            }
        }
        let bad = |e: ArchiveError| match e {
            ArchiveError::Invalid(m) => ApiError::bad("invalid_archive", m),
            // The store's own state: what it says.
            ArchiveError::Fs(
                e @ (FsError::Busy(_)
                | FsError::Stale
                | FsError::NoSpace
                | FsError::QuotaExceeded
                | FsError::Corrupt(_)
                | FsError::Storage(_)),
            ) => e.into(),
            // Anything else an entry met (a name too long, a file where a directory must be,
            // a path made empty by a long-name header) is the archive's fault.
            ArchiveError::Fs(e) => ApiError::bad(
                "invalid_archive",
                format!("the archive's entries do not make a filesystem: {e}"),
            ),
            ArchiveError::Io(e) => ApiError::bad("invalid_archive", e.to_string()),
        };
        let trust = self.config.trust;
        let opts = archive::ImportOptions {
            commit_every: IMPORT_COMMIT_BYTES,
            max_bytes: self.config.import_max_bytes,
            setid: trust.suid,
            devices: trust.dev,
            privileged_xattrs: trust.privileged_xattrs,
        };
        let report = if zst {
            archive::import(&ws, ZstdFrames::new(input), &opts)
        } else {
            archive::import(&ws, input, &opts)
        }
        .map_err(bad)?;
        if report.privileges_dropped > 0 {
            tracing::info!(
                "archive import into {id}: {} setuid/setgid bits and privileged extended \
                 attributes dropped",
                report.privileges_dropped
            );
        }
        ws.commit(true)?;
        Ok(report)
    }
}

type HeaderThenRest<R> = std::io::Chain<std::io::Cursor<Vec<u8>>, R>;

/// A zstd stream, frame after frame, each frame's window checked against
/// [`ZSTD_MAX_WINDOW`] before a decoder allocates it. After an error every read fails, and
/// after the end every read answers 0, however often the reader above asks.
struct ZstdFrames<R: Read> {
    /// Between frames; `None` while a frame holds it, or once it is done or failed.
    source: Option<R>,
    failed: bool,
    /// The frame being decoded: its header, already read, chained before the rest.
    frame: Option<
        ruzstd::decoding::StreamingDecoder<HeaderThenRest<R>, ruzstd::decoding::FrameDecoder>,
    >,
}

impl<R: Read> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames {
            source: Some(source),
            failed: false,
            frame: None,
        }
    }

    /// Starts the next frame; `false` at the end of the stream.
    fn next_frame(&mut self) -> std::io::Result<bool> {
        let mut source = match (self.frame.take(), self.source.take()) {
            (Some(f), _) => f.into_parts().0.into_inner().1,
            (None, Some(source)) => source,
            (None, None) => return Ok(false),
        };
        let mut header = Vec::with_capacity(18);
        let window = match read_frame_header(&mut source, &mut header)? {
            None => return Ok(false),
            Some(w) => w,
        };
        if window > ZSTD_MAX_WINDOW {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a zstd frame asks for a {} MiB window; at most {} MiB is accepted \
                     (compress without --long or --ultra)",
                    window >> 20,
                    ZSTD_MAX_WINDOW >> 20
                ),
            ));
        }
        let frame =
            ruzstd::decoding::StreamingDecoder::new(std::io::Cursor::new(header).chain(source))
                .map_err(std::io::Error::other)?;
        self.frame = Some(frame);
        Ok(true)
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.failed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the zstd stream failed earlier",
            ));
        }
        let read = self.read_frames(buf);
        self.failed = read.is_err();
        read
    }
}

impl<R: Read> ZstdFrames<R> {
    fn read_frames(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(f) = &mut self.frame {
                let n = f.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
            }
            if !self.next_frame()? {
                return Ok(0);
            }
        }
    }
}

/// Reads a zstd frame header into `header` and returns the window it asks for; `None` at a
/// clean end of the stream. Skippable frames are not accepted (no tar tool writes them).
fn read_frame_header(r: &mut impl Read, header: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut magic[got..])? {
            0 if got == 0 => return Ok(None),
            0 => {
                return Err(bad(
                    "not zstd: the stream ends inside a frame's magic number",
                ))
            }
            n => got += n,
        }
    }
    if u32::from_le_bytes(magic) != 0xFD2F_B528 {
        return Err(bad(
            "not zstd: a frame does not start with zstd's magic number",
        ));
    }
    header.extend_from_slice(&magic);
    let mut take = |n: usize, header: &mut Vec<u8>| -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b[..n])?;
        header.extend_from_slice(&b[..n]);
        Ok(u64::from_le_bytes(b))
    };
    let descriptor = take(1, header)? as u8;
    let single_segment = descriptor & 0x20 != 0;
    let window = if single_segment {
        None
    } else {
        let wd = take(1, header)?;
        let log = 10 + (wd >> 3);
        let base = 1u64 << log;
        Some(base + (base / 8) * (wd & 7))
    };
    let dict_bytes = [0, 1, 2, 4][(descriptor & 3) as usize];
    take(dict_bytes, header)?;
    let fcs_bytes = match descriptor >> 6 {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let fcs = take(fcs_bytes, header)? + if fcs_bytes == 2 { 256 } else { 0 };
    // A single-segment frame's window is its content size.
    Ok(Some(window.unwrap_or(fcs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// Found by tests/fuzz.rs: a read after the stream failed (or ended) found no source and
    /// panicked, taking the import's thread down.
    #[test]
    fn reads_after_an_error_or_the_end_neither_panic_nor_resume() {
        let whole = compressed(&[7u8; 100_000]);
        let mut cut = ZstdFrames::new(&whole[..whole.len() / 2]);
        let mut sink = Vec::new();
        assert!(cut.read_to_end(&mut sink).is_err());
        let mut buf = [0u8; 64];
        assert!(cut.read(&mut buf).is_err(), "a failed stream stays failed");
        assert!(cut.read(&mut buf).is_err());
        let mut bad_magic = ZstdFrames::new(&b"not zstd at all"[..]);
        assert!(bad_magic.read(&mut buf).is_err());
        assert!(bad_magic.read(&mut buf).is_err());
        let mut ok = ZstdFrames::new(&whole[..]);
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![7u8; 100_000]);
        assert_eq!(ok.read(&mut buf).unwrap(), 0);
        assert_eq!(ok.read(&mut buf).unwrap(), 0);
    }
}
