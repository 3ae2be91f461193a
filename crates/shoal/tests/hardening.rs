//! Issue #9 (B): containers are confined as Docker confines its own, with no flag needed:
//! a seccomp filter, masked and read-only /proc and /sys paths, few capabilities, and
//! `--cap-add` to grant more. Checked from inside real containers on a real node.

mod common;

use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Runs `script` in a busybox task with `flags`, waits for it to finish, returns its
/// output (stdout and stderr together).
fn run_script(tb: &Testbed, flags: &[&str], script: &str) -> String {
    let mut a = vec!["task", "run", "--monitor", "0s"];
    a.extend_from_slice(flags);
    a.extend_from_slice(&["busybox", "sh", "-c", script]);
    let out = tb.cli(0, &a);
    assert!(
        out.success,
        "task run: {}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    let id = out.stdout.lines().next().unwrap().trim().to_string();
    wait_task_state(tb, &id, "complete", T);
    tb.cli_ok(0, &["task", "logs", &id]).unwrap()
}

/// A static x86_64 program that makes one syscall with two arguments and exits with
/// its errno (0 on success): a way to call what busybox has no applet for.
fn syscall_probe(nr: u32, arg0: u32, arg1: u32) -> Vec<u8> {
    probe(nr, arg0, arg1, [0x0f, 0x05])
}

/// The same program making its call through the 32-bit ABI (`int 0x80`: i386 numbers,
/// arguments in ebx/ecx, so only calls without arguments are meaningful here).
fn ia32_probe(nr: u32) -> Vec<u8> {
    probe(nr, 0, 0, [0xcd, 0x80])
}

const IA32_GETPID: u32 = 20;

fn probe(nr: u32, arg0: u32, arg1: u32, call: [u8; 2]) -> Vec<u8> {
    let mut code = vec![0xb8]; // mov eax, nr
    code.extend(nr.to_le_bytes());
    code.push(0xbf); // mov edi, arg0
    code.extend(arg0.to_le_bytes());
    code.push(0xbe); // mov esi, arg1
    code.extend(arg1.to_le_bytes());
    code.extend([
        0x31, 0xd2, // xor edx, edx
        0x45, 0x31, 0xd2, // xor r10d, r10d
        0x45, 0x31, 0xc0, // xor r8d, r8d
        call[0], call[1], // syscall, or int 0x80
        0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax, -4095
        0x73, 0x04, // jae err
        0x31, 0xff, // xor edi, edi
        0xeb, 0x05, // jmp out
        0x48, 0x89, 0xc7, // err: mov rdi, rax
        0xf7, 0xdf, // neg edi
        0xb8, 0x3c, 0x00, 0x00, 0x00, // out: mov eax, 60 (exit)
        0x0f, 0x05, // syscall
    ]);
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let size = HEADERS + code.len() as u64;
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(0x3eu16.to_le_bytes()); // x86_64
    elf.extend(1u32.to_le_bytes());
    elf.extend((BASE + HEADERS).to_le_bytes()); // entry
    elf.extend(64u64.to_le_bytes()); // program headers
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend(v.to_le_bytes());
    }
    elf.extend(1u32.to_le_bytes()); // PT_LOAD
    elf.extend(5u32.to_le_bytes()); // R+X
    for v in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend(v.to_le_bytes());
    }
    elf.extend(code);
    elf
}

const SYS_KEYCTL: u32 = 250;
const SYS_ADD_KEY: u32 = 248;
const KEYCTL_GET_KEYRING_ID: u32 = 0;
const KEY_SPEC_SESSION_KEYRING: u32 = -3i32 as u32;

/// Runs a probe just written by this process. Another thread of the test may
/// have forked while the probe's file was open for writing; until that child
/// execs, the kernel refuses to run the file ("Text file busy"), so wait it out.
fn run_on_host(probe: &std::path::Path) -> std::process::ExitStatus {
    let mut tries = 0;
    loop {
        match std::process::Command::new(probe).status() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

#[test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "the syscall probes are x86_64 machine code"
)]
fn containers_run_under_seccomp_with_masked_and_readonly_paths() {
    let tb = cluster(1, &[]);
    import_busybox(&tb, 0);
    let probes = tb.dir().join("probes");
    std::fs::create_dir_all(&probes).unwrap();
    for (name, elf) in [
        (
            "keyctl",
            syscall_probe(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING),
        ),
        // add_key(NULL, …): EFAULT unfiltered, EPERM under the filter.
        ("add_key", syscall_probe(SYS_ADD_KEY, 0, 0)),
        ("ia32", ia32_probe(IA32_GETPID)),
    ] {
        let p = probes.join(name);
        std::fs::write(&p, elf).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // The probes work: outside a container the key calls get through to the kernel.
    let host = run_on_host(&probes.join("keyctl"));
    assert_eq!(host.code(), Some(0), "keyctl probe on the host");
    let host = run_on_host(&probes.join("add_key"));
    assert_eq!(host.code(), Some(libc::EFAULT), "add_key probe on the host");
    // The 32-bit probe works where the kernel runs 32-bit calls (most do).
    let ia32_on_host = run_on_host(&probes.join("ia32")).code() == Some(0);

    let mount = format!(
        "type=bind,source={},target=/probes,readonly",
        probes.display()
    );
    // Each check prints `name=<exit status> <output>`.
    let script = "busybox grep Seccomp: /proc/self/status; \
        r=$(busybox unshare -U true 2>&1); echo \"unshare=$? $r\"; \
        r=$(busybox mount -t tmpfs x /tmp 2>&1); echo \"mount=$? $r\"; \
        /probes/keyctl; echo keyctl=$?; \
        /probes/add_key; echo add_key=$?; \
        /probes/ia32; echo ia32=$?; \
        for f in /proc/kcore /proc/keys /proc/timer_list /proc/interrupts; do \
          echo \"masked $f=$(busybox stat -c '%F %t:%T %s' $f 2>&1)\"; done; \
        echo \"firmware=$(busybox ls -A /sys/firmware | busybox wc -l)\"; \
        r=$( (echo shoal > /proc/sys/kernel/domainname) 2>&1); echo \"sysctl=$? $r\"; \
        echo \"procsys=$(busybox grep ' /proc/sys ' /proc/self/mountinfo | busybox cut -d' ' -f6)\"; \
        busybox grep -E '^Cap(Eff|Prm|Bnd|Amb|Inh):' /proc/self/status; \
        r=$(busybox ip link add shoalcap0 type bridge 2>&1); echo \"iplink=$? $r\"";
    let out = run_script(&tb, &["--mount", &mount], script);
    let line = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .trim()
            .to_string()
    };
    assert_eq!(line("Seccomp:"), "2", "filtered");
    let unshare = line("unshare=");
    assert!(
        unshare.starts_with('1') && unshare.contains("Operation not permitted"),
        "no user namespace: {unshare}"
    );
    let mount = line("mount=");
    assert!(
        !mount.starts_with('0') && mount.contains("permission denied"),
        "no mount: {mount}"
    );
    assert_eq!(line("keyctl="), "1", "keyctl fails with EPERM");
    assert_eq!(line("add_key="), "1", "add_key fails with EPERM");
    if ia32_on_host {
        // 128 + SIGSYS: no 32-bit system calls in a container.
        assert_eq!(line("ia32="), "159", "a 32-bit call is killed");
    }
    // Masked files are /dev/null. This test's kernel may lack some (/proc/kcore needs
    // CONFIG_PROC_KCORE): each one the host has is checked.
    let mut checked = 0;
    for f in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/interrupts",
    ] {
        if std::path::Path::new(f).exists() {
            assert_eq!(
                line(&format!("masked {f}=")),
                "character special file 1:3 0",
                "{f} is /dev/null"
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "{out}");
    assert_eq!(line("firmware="), "0", "/sys/firmware is empty");
    let sysctl = line("sysctl=");
    assert!(
        !sysctl.starts_with('0') && sysctl.contains("Read-only file system"),
        "/proc/sys is read-only: {sysctl}"
    );
    assert!(line("procsys=").starts_with("ro,"), "{out}");
    // CAP_KILL, CAP_NET_BIND_SERVICE and CAP_AUDIT_WRITE; nothing to inherit.
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(line(set), "0000000020000420", "{set}");
    }
    for set in ["CapAmb:", "CapInh:"] {
        assert_eq!(line(set), "0000000000000000", "{set}");
    }
    let iplink = line("iplink=");
    assert!(
        !iplink.starts_with('0') && iplink.contains("Operation not permitted"),
        "no NET_ADMIN by default: {iplink}"
    );
    assert!(tb.exec_in(0, &["ip", "link", "show", "shoalcap0"]).is_err());

    // A task whose program makes a 32-bit call fails, and says why. (Detached: it may
    // fail before `task run` would see it running, and then the command fails too.)
    let mount = format!(
        "type=bind,source={},target=/probes,readonly",
        probes.display()
    );
    let out = tb.cli(
        0,
        &[
            "task",
            "run",
            "-d",
            "--mount",
            &mount,
            "busybox",
            "/probes/ia32",
        ],
    );
    assert!(out.success, "task run: {}{}", out.stdout, out.stderr);
    let id = out.stdout.lines().next().unwrap().trim().to_string();
    let t = wait_task_state(&tb, &id, "failed", T);
    let err = t["Status"]["Err"].as_str().unwrap();
    assert!(
        err.contains("non-zero exit (159)") && err.contains("SIGSYS") && err.contains("32-bit"),
        "{err}"
    );
}

#[test]
fn a_service_given_net_admin_can_add_a_link_and_inspect_shows_it() {
    let tb = cluster(1, &[]);
    import_busybox(&tb, 0);
    let out = tb.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--cap-add",
            "NET_ADMN",
            "busybox",
            "true",
        ],
    );
    assert!(
        !out.success && out.stderr.contains("unknown capability \"NET_ADMN\""),
        "{}",
        out.stderr
    );

    // The link is made in the task's own network namespace, and removed with it.
    let script = "busybox ip link add shoalcap0 type bridge 2>&1 && echo link-added; \
        busybox ip link del shoalcap0; exec sleep 3600";
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "netadmin",
            "--stop-grace-period",
            "200ms",
            "--cap-add",
            "net_admin",
            "busybox",
            "sh",
            "-c",
            script,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let logs = wait_for(T, || {
        let l = tb.cli_ok(0, &["service", "logs", "netadmin"]).ok()?;
        (l.contains("link-added") || l.contains("RTNETLINK")).then_some(l)
    })
    .unwrap_or_else(|| panic!("no output\n{}", tb.all_logs()));
    assert!(logs.contains("link-added"), "{logs}");

    let v: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["service", "inspect", "netadmin"]).unwrap()).unwrap();
    let s = &v[0];
    assert_eq!(
        s["Spec"]["TaskTemplate"]["ContainerSpec"]["CapabilityAdd"],
        serde_json::json!(["CAP_NET_ADMIN"])
    );
    assert_eq!(s["Security"]["Seccomp"], "default");
    assert_eq!(
        s["Security"]["Capabilities"],
        serde_json::json!([
            "CAP_KILL",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_ADMIN",
            "CAP_AUDIT_WRITE"
        ])
    );
    let masked = s["Security"]["MaskedPaths"].as_array().unwrap();
    assert!(masked.contains(&"/proc/kcore".into()), "{masked:?}");
    let pretty = tb
        .cli_ok(0, &["service", "inspect", "--pretty", "netadmin"])
        .unwrap();
    assert!(
        pretty.contains("Seccomp:\tdefault") && pretty.contains("Add:\t\tCAP_NET_ADMIN"),
        "{pretty}"
    );

    // The task shows the same; dropping the capability again takes it away.
    let id = tb
        .cli_ok(0, &["service", "ps", "-q", "netadmin"])
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let t = task(&tb, &id);
    assert!(t["Security"]["Capabilities"]
        .as_array()
        .unwrap()
        .contains(&"CAP_NET_ADMIN".into()));
    // What inspect shows is what runc was given.
    let config = tb.nodes[0]
        .state_dir
        .join("containers")
        .join(&id)
        .join("bundle/config.json");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let mut bounding: Vec<String> =
        serde_json::from_value(config["process"]["capabilities"]["bounding"].clone()).unwrap();
    bounding.sort();
    let mut shown: Vec<String> =
        serde_json::from_value(t["Security"]["Capabilities"].clone()).unwrap();
    shown.sort();
    assert_eq!(bounding, shown);
    assert_eq!(
        config["linux"]["seccomp"]["defaultAction"],
        "SCMP_ACT_ERRNO"
    );
    let masked: Vec<String> =
        serde_json::from_value(config["linux"]["maskedPaths"].clone()).unwrap();
    for p in t["Security"]["MaskedPaths"].as_array().unwrap() {
        let p = p.as_str().unwrap();
        assert!(
            p.contains('*') || masked.iter().any(|m| m == p),
            "{p} in config.json: {masked:?}"
        );
    }
    assert!(masked.iter().any(|m| m == "/proc/kcore"));
    assert_eq!(
        config["linux"]["readonlyPaths"],
        t["Security"]["ReadonlyPaths"]
    );
    tb.cli_ok(
        0,
        &["service", "update", "--cap-drop", "NET_ADMIN", "netadmin"],
    )
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["service", "inspect", "netadmin"]).unwrap()).unwrap();
    assert_eq!(
        v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["CapabilityAdd"],
        serde_json::json!([])
    );
    assert!(!v[0]["Security"]["Capabilities"]
        .as_array()
        .unwrap()
        .contains(&"CAP_NET_ADMIN".into()));
    tb.cli_ok(0, &["service", "rm", "netadmin"]).unwrap();
    let _ = tb.exec_in(0, &["ip", "link", "del", "shoalcap0"]);
}

#[test]
fn sys_admin_unlocks_mount_as_in_docker() {
    let tb = cluster(1, &[]);
    import_busybox(&tb, 0);
    let out = run_script(
        &tb,
        &["--cap-add", "SYS_ADMIN"],
        "busybox mount -t tmpfs x /tmp 2>&1 && echo mounted",
    );
    assert!(out.contains("mounted"), "{out}");
}
