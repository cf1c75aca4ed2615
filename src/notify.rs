//! systemd's notify protocol (`sd_notify(3)`) for a `Type=notify` unit: `READY=1` once the
//! API serves; on SIGHUP (`systemctl reload`), `RELOADING=1` as the daemon starts its successor
//! (this binary, same command line, `CHASER_TAKEOVER=true`: a takeover), which sends
//! `MAINPID=` (itself) just before the old daemon exits and then `READY=1`; `STOPPING=1` at
//! SIGTERM. Without `NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::process::Command;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if it listens; a failure is
/// logged.
pub(crate) fn notify(state: &str) {
    if let Err(e) = send(state) {
        tracing::warn!("notifying systemd ({}): {e}", state.replace('\n', " "));
    }
}

/// Sends `state` to systemd: `Ok` once sent, or if no `NOTIFY_SOCKET` is set.
pub(crate) fn send(state: &str) -> std::io::Result<()> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let s = UnixDatagram::unbound()?;
    match socket.as_bytes() {
        // An abstract socket ("@name").
        [b'@', name @ ..] => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            s.send_to_addr(state.as_bytes(), &addr)?;
        }
        _ => {
            s.send_to(state.as_bytes(), &socket)?;
        }
    }
    Ok(())
}

/// This process is the service's main one, and serves.
pub(crate) fn ready() {
    notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
}

/// SIGHUP: starts this binary again with this process's command line, as a takeover. The
/// successor takes every session over and becomes the service's main process; if it fails,
/// this daemon serves on (the takeover is all or nothing) and says it is ready again.
pub(crate) fn reload() {
    let mut argv = std::env::args_os();
    let Some(program) = argv.next() else {
        return;
    };
    notify("RELOADING=1");
    let spawned = Command::new(&program)
        .args(argv)
        .env("CHASER_TAKEOVER", "true")
        .spawn();
    match spawned {
        Ok(mut child) => {
            tracing::info!("reload: started successor {}", child.id());
            // Reaped here if it fails: a successor that took over outlives this process.
            let _ = std::thread::Builder::new()
                .name("successor".into())
                .spawn(move || {
                    if let Ok(status) = child.wait() {
                        tracing::warn!("reload: the successor exited ({status}); serving on");
                        ready();
                    }
                });
        }
        Err(e) => {
            tracing::error!("reload: cannot start {}: {e}", program.to_string_lossy());
            ready();
        }
    }
}
