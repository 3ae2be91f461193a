//! The userspace WireGuard engine: `shoal dataplane`, our binary re-executed as a
//! long-lived helper (it outlives daemon restarts, so the data plane does too). It owns
//! the TUN link `shoal-wg` in the node's namespace, the UDP socket of the data path,
//! and a gotatun device, and takes its configuration over a unix socket in WireGuard's
//! standard UAPI text protocol (so the agent configures it as `wg set` would).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The helper's first argument.
pub const SUBCOMMAND: &str = "dataplane";
/// The WireGuard link of every node.
pub const LINK: &str = "shoal-wg";
/// Its MTU: a 1500-byte underlay less IPv4 (20), UDP (8) and WireGuard (32) headers,
/// with room for an IPv6 underlay (reference/networking.md §6.11).
pub const MTU: u32 = 1420;

/// Where a node's helper takes its configuration.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("network").join("wg.sock")
}

/// `shoal dataplane STATE_DIR`: runs the engine until killed. Never returns.
pub fn main(args: &[String]) -> ! {
    let code = match args.first() {
        Some(dir) => match run(Path::new(dir)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("shoal dataplane: {e}");
                1
            }
        },
        None => {
            eprintln!("usage: shoal dataplane STATE_DIR");
            2
        }
    };
    std::process::exit(code)
}

fn run(state_dir: &Path) -> Result<(), String> {
    let key = super::wgkey::WgKey::load_or_create(&state_dir.join("network").join("wg.key"))?;
    let secret = x25519_dalek::StaticSecret::from(key.secret_bytes());
    let sock = socket_path(state_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async move {
        let (client, server) = gotatun::device::uapi::UapiServer::new();
        let mut device = gotatun::device::DeviceBuilder::new()
            .with_default_udp()
            .create_tun(LINK)
            .map_err(|e| format!("cannot create the TUN link {LINK}: {e}"))?
            .with_private_key(secret)
            .with_uapi(server)
            .build()
            .await
            .map_err(|e| format!("cannot start the WireGuard device: {e}"))?;
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock)
            .map_err(|e| format!("cannot listen on {}: {e}", sock.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600));
        }
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                client.clone().wrap_read_write(stream);
            }
        });
        device.wait().await;
        Err("the WireGuard device stopped".to_string())
    })
}

/// How long a new helper has to start answering.
const HELPER_START: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the helper answers on its socket.
fn helper_answers(sock: &Path) -> bool {
    uapi(sock, "get=1\n\n").is_ok()
}

/// Starts the node's helper unless one (a previous daemon's: it outlives them) already
/// answers. It runs in a session of its own, with its errors in
/// `<state>/network/dataplane.log` and its process ID in `dataplane.pid`.
pub fn ensure_helper(state_dir: &Path) -> Result<(), String> {
    let sock = socket_path(state_dir);
    if helper_answers(&sock) {
        return Ok(());
    }
    let dir = state_dir.join("network");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let log_path = dir.join("dataplane.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find our own executable: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(SUBCOMMAND)
        .arg(state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // Its own session: the data plane outlives the daemon.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the WireGuard engine: {e}"))?;
    let _ = std::fs::write(dir.join("dataplane.pid"), format!("{}\n", child.id()));
    let deadline = std::time::Instant::now() + HELPER_START;
    loop {
        if helper_answers(&sock) {
            // Reaped when it ends, so it leaves no zombie behind while the daemon runs.
            std::thread::spawn(move || child.wait());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = log.lines().last().unwrap_or("no message").to_string();
            return Err(format!(
                "the userspace WireGuard engine stopped at start ({status}): {last}"
            ));
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the userspace WireGuard engine did not start within 5 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Stops the node's helper (when the node leaves its cluster); its TUN link goes with
/// it.
pub fn stop_helper(state_dir: &Path) {
    let pid = std::fs::read_to_string(state_dir.join("network").join("dataplane.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        // Only if it is still our helper (a recycled PID is someone else's).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline
            .split(|b| *b == 0)
            .any(|a| a == SUBCOMMAND.as_bytes())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let _ = std::fs::remove_file(state_dir.join("network").join("dataplane.pid"));
}

/// Base64 (as nodes announce keys) to hex (as UAPI takes them).
pub fn key_hex(b64: &str) -> Option<String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    (raw.len() == 32).then(|| hex::encode(raw))
}

/// The UAPI `set` request that makes `peers` the device's whole peer set, listening on
/// `port`: each peer reachable at its endpoint, and allowed only its own tunnel
/// address (so a packet from tunnel address X was sent by the holder of X's key).
pub fn set_request(port: u16, peers: &[shoal_proto::dispatcher::Peer]) -> String {
    let mut r = format!("set=1\nlisten_port={port}\nreplace_peers=true\n");
    for p in peers {
        let (Some(key), Some(ip)) = (key_hex(&p.public_key), p.tunnel_addr.split('/').next())
        else {
            continue;
        };
        r.push_str(&format!(
            "public_key={key}\nendpoint={}\nreplace_allowed_ips=true\nallowed_ip={ip}/32\n",
            p.endpoint
        ));
    }
    r.push('\n');
    r
}

/// Sends one UAPI request to the helper and checks its `errno=0`.
pub fn uapi(sock: &Path, request: &str) -> Result<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| {
        format!(
            "cannot reach the WireGuard engine at {}: {e}",
            sock.display()
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("cannot configure the WireGuard engine: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("no answer from the WireGuard engine: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.ends_with(b"\n\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    match text.lines().find_map(|l| l.strip_prefix("errno=")) {
        Some("0") => Ok(text),
        Some(n) => Err(format!(
            "the WireGuard engine refused the configuration (errno {n})"
        )),
        None => Err(format!("the WireGuard engine answered {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_become_one_replace_request_with_hex_keys_and_one_address_each() {
        let peer = |k: &str, ep: &str, t: &str| shoal_proto::dispatcher::Peer {
            node_id: "n".into(),
            public_key: k.into(),
            endpoint: ep.into(),
            tunnel_addr: t.into(),
        };
        let k = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let r = set_request(
            51820,
            &[
                peer(k, "10.0.0.2:51820", "10.255.240.2/20"),
                peer("bad", "10.0.0.3:51820", "10.255.240.3/20"),
            ],
        );
        assert_eq!(
            r,
            "set=1\nlisten_port=51820\nreplace_peers=true\n\
             public_key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\
             endpoint=10.0.0.2:51820\nreplace_allowed_ips=true\nallowed_ip=10.255.240.2/32\n\n"
        );
    }
}
