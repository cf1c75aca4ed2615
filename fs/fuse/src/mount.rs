//! A FUSE connection this process serves: mounted here, or handed over by the process that
//! served it before (graceful takeover, as EdenFS does). A connection outlives any one
//! daemon: what keeps it alive is an open `/dev/fuse` descriptor, which can be passed to
//! another process; requests wait in the kernel meanwhile, and nobody sees `ENOTCONN`.
//!
//! fuser has no way to stop a session without ending the connection, nor to start one on a
//! connection whose `FUSE_INIT` was answered long ago. Both are done around it, on the file
//! descriptor its channel reads: [`FuseMount::stop`] points that descriptor at a socket
//! (`dup2`), wakes the readers so they read again from the socket, and feeds each a
//! `FUSE_DESTROY`; [`FuseMount::prepare`] lets a new session answer a `FUSE_INIT` built from
//! what the kernel offered the first time, over a socket, then points its descriptor at the
//! connection.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use nix::mount::MntFlags;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

use crate::adapter::FuseAdapter;
use crate::offer::{KernelOffer, OfferSlot};

/// `FUSE_INIT` and `FUSE_DESTROY` opcodes, and the size of `fuse_in_header`.
const FUSE_INIT: u32 = 26;
const FUSE_DESTROY: u32 = 38;
const IN_HEADER: usize = 40;
/// Request ids of the requests made here; the kernel's count up from 1 and never get there.
const OWN_UNIQUE: u64 = 1 << 63;
/// The largest reply a session sends (a 1 MiB read), with room to spare.
const MAX_REPLY: usize = 4 << 20;
/// How long a stop waits for a request being served to finish.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// Wakes a session's readers out of `read` on `/dev/fuse` (see [`FuseMount::stop`]).
const WAKE: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;

pub struct FuseMount {
    session: fuser::BackgroundSession,
    /// The descriptor fuser's channel reads and writes.
    channel_fd: RawFd,
    /// Another descriptor of the same connection: what is handed over.
    device: OwnedFd,
    mountpoint: PathBuf,
    readers: usize,
    offer: OfferSlot,
}

/// A connection no session of this process serves any more; still mounted, its requests
/// waiting in the kernel.
pub struct Stopped {
    pub device: OwnedFd,
    pub mountpoint: PathBuf,
    pub offer: KernelOffer,
}

/// A session ready to serve a connection, not reading from it yet (see
/// [`FuseMount::prepare`]).
pub struct Prepared {
    session: fuser::Session<FuseAdapter>,
    channel_fd: RawFd,
    device: OwnedFd,
    mountpoint: PathBuf,
    readers: usize,
    offer: OfferSlot,
}

impl Prepared {
    /// Starts reading the connection's requests.
    pub fn start(self) -> io::Result<FuseMount> {
        Ok(FuseMount {
            session: self.session.spawn()?,
            channel_fd: self.channel_fd,
            device: self.device,
            mountpoint: self.mountpoint,
            readers: self.readers,
            offer: self.offer,
        })
    }
}

/// What the kernel enforces on a mount's files. Workspace contents come from tenants, so by
/// default a setuid bit or a device node in them confers nothing (`nosuid`, `nodev`).
#[derive(Clone, Copy, Debug, Default)]
pub struct MountFlags {
    /// `ro`: writes fail with EROFS before any page is dirtied (snapshot sessions).
    pub read_only: bool,
    /// Honour setuid/setgid bits and file capabilities (`suid`). Operator's choice only.
    pub suid: bool,
    /// Let device nodes be opened (`dev`). Operator's choice only.
    pub dev: bool,
}

impl FuseMount {
    /// Mounts `adapter` on the directory `dir` (an `O_PATH` descriptor), which is `path`.
    /// The mount is made on the descriptor, not the path, so a path swapped meanwhile (a
    /// symlink put in its place) cannot redirect it.
    pub fn mount(
        adapter: FuseAdapter,
        dir: BorrowedFd<'_>,
        path: &Path,
        fsname: &str,
        flags: MountFlags,
        cfg: &fuser::Config,
    ) -> io::Result<FuseMount> {
        use nix::mount::MsFlags;
        let offer = adapter.offer_slot();
        let device: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")?
            .into();
        let root_type = nix::sys::stat::fstat(dir)?.st_mode & libc::S_IFMT;
        let data = format!(
            "fd={},rootmode={root_type:o},user_id=0,group_id=0,default_permissions,allow_other",
            device.as_raw_fd()
        );
        let mut ms = MsFlags::empty();
        ms.set(MsFlags::MS_RDONLY, flags.read_only);
        ms.set(MsFlags::MS_NOSUID, !flags.suid);
        ms.set(MsFlags::MS_NODEV, !flags.dev);
        let target = format!("/proc/self/fd/{}", dir.as_raw_fd());
        nix::mount::mount(
            Some(fsname),
            target.as_str(),
            Some("fuse.chaserfs"),
            ms,
            Some(data.as_str()),
        )
        .map_err(|e| io::Error::other(format!("mount(2) on {}: {e}", path.display())))?;
        // The kernel sent FUSE_INIT when it mounted; the session answers it here.
        let session = fuser::Session::from_fd(adapter, device.try_clone()?, cfg.acl, cfg.clone())
            .inspect_err(|_| {
            let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        })?;
        let channel_fd = session.as_fd().as_raw_fd();
        Ok(FuseMount {
            session: session.spawn()?,
            channel_fd,
            device,
            mountpoint: path.to_path_buf(),
            readers: cfg.n_threads.unwrap_or(1),
            offer,
        })
    }

    /// Readies a session for a connection another session answered `FUSE_INIT` for (in this
    /// process or another), mounted at `path`: it answers that INIT again, over a socket, and
    /// takes the connection, but reads nothing from it until [`Prepared::start`]. Dropped
    /// unstarted, it leaves the connection to whoever else holds it.
    pub fn prepare(
        adapter: FuseAdapter,
        device: OwnedFd,
        path: &Path,
        cfg: &fuser::Config,
        offer: KernelOffer,
    ) -> io::Result<Prepared> {
        let slot = adapter.offer_slot();
        let (ours, theirs) = seqpacket_pair()?;
        socket::send(ours.as_raw_fd(), &init_request(&offer), MsgFlags::empty())?;
        // The handshake reads that INIT from the socket and answers it there.
        let session = fuser::Session::from_fd(adapter, theirs, cfg.acl, cfg.clone())?;
        let mut reply = [0u8; 1024];
        let n = socket::recv(ours.as_raw_fd(), &mut reply, MsgFlags::MSG_DONTWAIT)?;
        let error = (n >= 16).then(|| i32::from_ne_bytes(reply[4..8].try_into().expect("4")));
        if error != Some(0) {
            return Err(io::Error::other(format!(
                "the session refused the connection's INIT (error {error:?})"
            )));
        }
        let channel_fd = session.as_fd().as_raw_fd();
        point_at(channel_fd, &device)?;
        Ok(Prepared {
            session,
            channel_fd,
            device,
            mountpoint: path.to_path_buf(),
            readers: cfg.n_threads.unwrap_or(1),
            offer: slot,
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (the kernel writes back its cache first) and waits for the session to end.
    pub fn umount_and_join(self) -> io::Result<()> {
        nix::mount::umount2(&self.mountpoint, MntFlags::UMOUNT_NOFOLLOW)?;
        self.session.join()
    }

    /// Stops serving the connections of `mounts` without ending them: their requests wait in
    /// the kernel from then on, for whoever serves them next. Returns when every request
    /// already read has been answered. Every session's descriptor is repointed before any
    /// reader is woken, so no woken reader can read from the kernel again.
    pub fn stop(mounts: Vec<FuseMount>) -> Vec<io::Result<Stopped>> {
        if let Err(e) = install_wake_handler() {
            tracing::error!("installing the wake handler: {e}");
        }
        let mut parked = Vec::with_capacity(mounts.len());
        for m in mounts {
            let parked_one = seqpacket_pair().and_then(|(ours, theirs)| {
                // Replies of the requests read meanwhile come here and are passed on whole.
                socket::setsockopt(&theirs, socket::sockopt::SndBufForce, &MAX_REPLY)?;
                socket::setsockopt(
                    &ours,
                    socket::sockopt::ReceiveTimeout,
                    &nix::sys::time::TimeVal::new(STOP_WAIT.as_secs() as i64, 0),
                )?;
                point_at(m.channel_fd, &theirs)?;
                Ok(ours)
            });
            parked.push((m, parked_one));
        }
        if let Err(e) = wake_readers() {
            tracing::error!("waking FUSE readers: {e}");
        }
        parked.into_iter().map(|(m, ours)| m.drain(ours?)).collect()
    }

    /// Ends each reader with a `FUSE_DESTROY` of its own, forwarding every other reply to
    /// the connection, and joins the session.
    fn drain(mut self, ours: OwnedFd) -> io::Result<Stopped> {
        for i in 0..self.readers {
            let destroy = request(FUSE_DESTROY, OWN_UNIQUE + i as u64, &[]);
            socket::send(ours.as_raw_fd(), &destroy, MsgFlags::empty())?;
        }
        let mut buf = vec![0u8; MAX_REPLY];
        let mut ended = 0;
        while ended < self.readers {
            let n = socket::recv(ours.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC)?;
            if !(16..=buf.len()).contains(&n) {
                return Err(io::Error::other(format!("a reply of {n} bytes")));
            }
            let unique = u64::from_ne_bytes(buf[8..16].try_into().expect("8"));
            if unique >= OWN_UNIQUE {
                ended += 1;
                continue;
            }
            // ENOENT: the kernel gave up on the request (interrupted) meanwhile.
            if let Err(e) = nix::unistd::write(&self.device, &buf[..n]) {
                tracing::debug!("passing on a reply: {e}");
            }
        }
        // The session's thread ends once its readers have; the mount must outlive it, so
        // the handle (which would unmount when dropped) is never dropped.
        let guard = std::mem::replace(&mut self.session.guard, std::thread::spawn(|| Ok(())));
        let joined = guard.join();
        let offer = self.offer.lock().expect("offer").unwrap_or(KernelOffer {
            minor: 31,
            flags: 0,
            max_readahead: 1 << 20,
        });
        let FuseMount {
            session,
            device,
            mountpoint,
            ..
        } = self;
        std::mem::forget(session);
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("session of {}: {e}", mountpoint.display()),
            Err(_) => tracing::error!("session of {} panicked", mountpoint.display()),
        }
        Ok(Stopped {
            device,
            mountpoint,
            offer,
        })
    }
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Makes `channel_fd` refer to what `target` refers to, atomically (`dup2`).
fn point_at(channel_fd: RawFd, target: &OwnedFd) -> io::Result<()> {
    // SAFETY: `channel_fd` is a session's channel descriptor, open for as long as the
    // session is; dup2 replaces the file it refers to and touches no memory.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::dup2(target.as_raw_fd(), channel_fd) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_wake(_: libc::c_int) {}

/// The wake signal interrupts a blocked `read`, which then starts again (`SA_RESTART`) and
/// looks its descriptor up afresh; any other call it interrupts carries on.
fn install_wake_handler() -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let action = SigAction::new(
            SigHandler::Handler(on_wake),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        #[allow(unsafe_code)]
        let r = unsafe { sigaction(WAKE, &action) };
        result = r.map(drop).map_err(io::Error::from);
    });
    result
}

/// Signals every fuser reader thread of this process (they are named `fuser-N`).
fn wake_readers() -> io::Result<()> {
    let pid = std::process::id() as libc::pid_t;
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("fuser-") || comm == "fuser-bg" {
            continue;
        }
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: tgkill takes plain integers; a thread that has exited meanwhile gives ESRCH.
        #[allow(unsafe_code)]
        unsafe {
            libc::syscall(libc::SYS_tgkill, pid, tid, WAKE as libc::c_int);
        }
    }
    Ok(())
}

/// A request as the kernel writes it: `fuse_in_header`, then `arg`.
fn request(opcode: u32, unique: u64, arg: &[u8]) -> Vec<u8> {
    let len = (IN_HEADER + arg.len()) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&opcode.to_ne_bytes());
    out.extend_from_slice(&unique.to_ne_bytes());
    out.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
    out.extend_from_slice(&0u32.to_ne_bytes()); // uid
    out.extend_from_slice(&0u32.to_ne_bytes()); // gid
    out.extend_from_slice(&0u32.to_ne_bytes()); // pid
    out.extend_from_slice(&0u32.to_ne_bytes()); // padding
    out.extend(arg);
    out
}

/// `FUSE_INIT` as the kernel sent it: `fuse_init_in` (major, minor, max_readahead, flags,
/// flags2, unused[11]).
fn init_request(offer: &KernelOffer) -> Vec<u8> {
    let mut arg = Vec::with_capacity(64);
    for word in [
        7,
        offer.minor,
        offer.max_readahead,
        offer.flags as u32,
        (offer.flags >> 32) as u32,
    ] {
        arg.extend_from_slice(&word.to_ne_bytes());
    }
    arg.resize(64, 0);
    request(FUSE_INIT, OWN_UNIQUE, &arg)
}

/// Sends `fds` with `data` over a Unix socket (`SCM_RIGHTS`).
pub fn send_fds(sock: &impl AsFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let cmsg = [socket::ControlMessage::ScmRights(fds)];
    socket::sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &[IoSlice::new(data)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives one message sent by [`send_fds`] into `data`, with up to `max` descriptors.
pub fn recv_fds(
    sock: &impl AsFd,
    data: &mut [u8],
    max: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use std::os::fd::FromRawFd;
    let mut space = vec![0u8; socket::cmsg_space::<RawFd>() * max.max(1)];
    let mut iov = [io::IoSliceMut::new(data)];
    let msg = socket::recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let socket::ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors in this process for us alone.
            #[allow(unsafe_code)]
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("descriptors were dropped in transit"));
    }
    Ok((msg.bytes, fds))
}

/// How every session's FUSE connection is served.
pub fn session_config() -> fuser::Config {
    let mut cfg = fuser::Config::default();
    // Mounted `allow_other` with `default_permissions`: the kernel checks permissions from
    // our modes, so sessions can run as any user.
    cfg.acl = fuser::SessionACL::All;
    // Four dispatch threads: measured 2x a single thread on tar -x; more gain nothing on
    // two cores, and the workspace orders operations itself.
    cfg.n_threads = Some(4);
    cfg
}
