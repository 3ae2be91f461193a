#!/usr/bin/env bash
# A local 3-node shoal cluster on this machine: one manager and two workers, each a real
# 'shoal daemon' in its own network namespace with its own hostname and address, on a
# private bridge (in a namespace of its own, so nothing touches the host's network).
#
#   scripts/cluster.sh up      build shoal, start the nodes, form the cluster
#   scripts/cluster.sh up --managers 3
#                              the same with three managers (manager1-3) in Raft, and two workers
#   scripts/cluster.sh down    stop everything and remove what 'up' made
#   scripts/cluster.sh status  node ls
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=/run/shoal-demo
MANAGERS=1
if [ "${2:-}" = "--managers" ]; then MANAGERS=${3:-1}; fi
case "$MANAGERS" in 1|3|5|7) ;; *) echo "--managers takes 1, 3, 5 or 7" >&2; exit 2 ;; esac
NAMES=()
for m in $(seq "$MANAGERS"); do NAMES+=("manager$m"); done
NAMES+=(worker1 worker2)
SUBNET=10.77.0
BIN=$PWD/target/release/shoal

sock() { echo "$RUN/$1/shoal.sock"; }
cli() { "$BIN" -H "unix://$(sock "$1")" "${@:2}"; }

down() {
  for i in $(seq 9); do
    ns=shoal-demo-$i
    if ip netns list | grep -qw "$ns"; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null || true; done
      sleep 0.5
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
  # Containers have network namespaces of their own: find them by their cgroups.
  for f in $(find /sys/fs/cgroup/shoal-demo /sys/fs/cgroup/pids/shoal-demo -name cgroup.procs 2>/dev/null); do
    for p in $(cat "$f"); do kill -KILL "$p" 2>/dev/null || true; done
  done
  sleep 0.2
  ip netns list | grep -qw shoal-demo-hub && ip netns del shoal-demo-hub
  # Container cgroups (empty once their processes are gone).
  for h in /sys/fs/cgroup /sys/fs/cgroup/*; do
    [ -d "$h/shoal-demo" ] && find "$h/shoal-demo" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$RUN"
  echo "local cluster removed"
}

up() {
  [ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
  ./scripts/deps.sh
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --locked --release -p shoal
  down >/dev/null 2>&1 || true
  mkdir -p "$RUN"
  ip netns add shoal-demo-hub
  ip -n shoal-demo-hub link add br0 type bridge
  ip -n shoal-demo-hub link set br0 up
  for i in $(seq ${#NAMES[@]}); do
    name=${NAMES[$((i-1))]}; ns=shoal-demo-$i
    ip netns add "$ns"
    ip -n shoal-demo-hub link add "v$i" type veth peer name eth0 netns "$ns"
    ip -n shoal-demo-hub link set "v$i" master br0 up
    ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "$RUN/$name"
    # nsenter, not 'ip netns exec' (which remounts /sys and hides the cgroups runc needs).
    nohup nsenter --net=/run/netns/"$ns" -- unshare --uts --mount -- sh -c \
      "hostname $name && exec $BIN daemon --state-dir $RUN/$name/state --socket $(sock "$name") --cgroup-parent shoal-demo/$name" \
      >"$RUN/$name/daemon.log" 2>&1 &
  done
  for name in "${NAMES[@]}"; do
    for _ in $(seq 100); do [ -S "$(sock "$name")" ] && break; sleep 0.1; done
  done
  cli manager1 init --advertise-addr "$SUBNET.1"
  mtoken=$(cli manager1 join-token -q manager)
  for m in $(seq 2 "$MANAGERS"); do cli "manager$m" join --token "$mtoken" "$SUBNET.1:4377"; done
  token=$(cli manager1 join-token -q worker)
  cli worker1 join --token "$token" "$SUBNET.1:4377"
  cli worker2 join --token "$token" "$SUBNET.1:4377"
  sleep 1
  echo
  cli manager1 node ls

  # A sample image on every node (a busybox root filesystem), and a container on a worker.
  img=$RUN/busybox-rootfs
  mkdir -p "$img/bin" "$img/etc" "$img/tmp" "$img/proc" "$img/sys" "$img/dev" "$img/www"
  cp /bin/busybox "$img/bin/busybox"
  for a in sh echo sleep cat ls hostname httpd wget date; do ln -sf busybox "$img/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$img/etc/passwd"
  echo '<h1>Hello from shoal</h1>' >"$img/www/index.html"
  tar -C "$img" -cf "$RUN/busybox.tar" .
  for name in "${NAMES[@]}"; do cli "$name" image import "$RUN/busybox.tar" busybox:latest >/dev/null; done
  echo
  echo "$ shoal task run --node worker1 --name hello busybox sh -c 'echo Hello from \$(hostname) on ...'"
  cli manager1 task run --node worker1 --name hello busybox \
    sh -c 'echo "Hello from container $(hostname), running on a shoal worker"; date; sleep 3600'
  sleep 0.5
  echo
  echo "$ shoal task ls"
  cli manager1 task ls
  echo
  echo "$ shoal task logs hello"
  cli manager1 task logs hello

  # A sample service: 4 replicas of busybox's httpd, all on port 8080. Every task has a
  # network namespace of its own on its node's bridge, so two on one node do not clash.
  echo
  echo "$ shoal service create --name web --replicas 4 busybox httpd -f -p 8080 -h /www"
  cli manager1 service create --name web --replicas 4 busybox httpd -f -p 8080 -h /www
  echo
  echo "$ shoal service ps web"
  cli manager1 service ps web
  echo
  # The page from each task, at its own address, from inside its node's namespace.
  cli manager1 service ps --format json web \
    | sed -n 's/.*"ID":"\([^"]*\)".*"Node":"\([^"]*\)".*/\1 \2/p' | while read -r id node; do
    addr=$(cli manager1 task inspect "$id" | grep -A1 '"Addresses"' | grep -o '[0-9.]*/[0-9]*' | cut -d/ -f1)
    for i in $(seq ${#NAMES[@]}); do
      if [ "${NAMES[$((i-1))]}" = "$node" ] && [ -n "$addr" ]; then
        echo "$ wget -qO- http://$addr:8080/    (task ${id:0:12}, from $node's namespace)"
        timeout 3 ip netns exec "shoal-demo-$i" busybox wget -qO- "http://$addr:8080/" || true
      fi
    done
  done
  cat <<TXT

The cluster is up. Talk to the manager with:

    export SHOAL_HOST=unix://$(sock manager1)
    $BIN node ls
    $BIN info
    $BIN node inspect --pretty worker1
    $BIN task run --node worker2 busybox echo hi      # then: $BIN task logs <ID>
    $BIN task ls
    $BIN service ls
    $BIN service scale web=2
    $BIN node update --availability drain worker2

Logs: $RUN/<node>/daemon.log.  Tear it all down with: scripts/cluster.sh down
TXT
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) cli manager1 node ls ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
