//! A manager whose state directory fills up: writes fail with a plain message naming
//! the directory and the free space, nothing acknowledged is lost, and writes work
//! again by themselves once space is freed, without a restart.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A small tmpfs over a directory, unmounted when dropped (even if the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mount a tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

fn create(tb: &shoal_testbed::Testbed, name: &str) -> shoal_testbed::CliOutput {
    tb.cli(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--replicas",
            "0",
            "busybox",
            "true",
        ],
    )
}

#[test]
fn a_full_state_dir_refuses_writes_plainly_and_recovers_without_a_restart() {
    let mut tb = testbed(1);
    tb.stop(0).unwrap();
    let dir = tb.nodes[0].state_dir.clone();
    let _fs = Tmpfs::mount(&dir, "48m");
    tb.start(0).unwrap();
    tb.init(0, &[]).unwrap();
    assert!(create(&tb, "before").success);

    // Fill the disk up to the last 2 MiB.
    let filler = dir.join("filler");
    let room = free_bytes(&dir).saturating_sub(2 << 20);
    std::fs::write(&filler, vec![0u8; room as usize]).unwrap();

    let started = Instant::now();
    let out = create(&tb, "while-full");
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("cannot store the change")
            && out.stderr.contains(dir.join("raft").to_str().unwrap())
            && out.stderr.contains("free")
            && out.stderr.contains("MiB"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    eprintln!("refused as: {}", out.stderr.trim());
    // Reads still work, and show what was stored before.
    let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
    assert!(ls.contains("before") && !ls.contains("while-full"), "{ls}");

    // Space freed: writes work again, with no restart.
    std::fs::remove_file(&filler).unwrap();
    let out = create(&tb, "after");
    assert!(out.success, "{}\n{}", out.stderr, tb.all_logs());
    let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
    assert!(
        ls.contains("before") && ls.contains("after") && !ls.contains("while-full"),
        "{ls}"
    );
    tb.stop(0).unwrap();
}
