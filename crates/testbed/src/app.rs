//! The three-service application of issue #23, from Debian's packages, for its test
//! and its benchmark: `proxy` (nginx) publishing port 8080 and proxying to `web` by its
//! short name; `web`, a CGI counter (busybox httpd) counting visits in `db`; `db`
//! (redis-server) with its configuration as a config, its password as a secret, its data
//! in a named volume, and a health check. The compose file is `app.yml`.

use crate::Testbed;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The three-service application of the issue, from Debian's packages: nginx proxying
/// to a CGI counter (busybox httpd) that counts visits in redis (its configuration a
/// config, its password a secret, its data a named volume, a health check).
pub const APP: &str = r#"
services:
  proxy:
    image: app-nginx
    command: ["/usr/sbin/nginx", "-c", "/etc/nginx/app.conf"]
    ports: ["8080:80"]
    cap_add: [CHOWN, SETUID, SETGID]
    configs:
      - source: nginx_conf
        target: /etc/nginx/app.conf
    stop_grace_period: 1s
    depends_on: [web]
  web:
    image: app-redis
    command: httpd -f -p 80 -h /www
    environment:
      GREETING: ${GREETING:-hello}
    secrets: [db_password]
    configs:
      - source: count_cgi
        target: /www/cgi-bin/count
        mode: 0555
    stop_grace_period: 300ms
    depends_on:
      db: {condition: service_healthy}
  db:
    image: app-redis
    command: ["sh", "-c", "exec redis-server /etc/redis/app.conf --requirepass \"$$(cat /run/secrets/db_password)\""]
    configs:
      - source: redis_conf
        target: /etc/redis/app.conf
    secrets: [db_password]
    volumes: [data:/data]
    healthcheck:
      test: redis-cli -a "$$(cat /run/secrets/db_password)" --no-auth-warning ping | grep -q PONG
      interval: 1s
      retries: 30
    deploy:
      placement:
        constraints: [node.hostname==node2]
configs:
  nginx_conf: {file: ./nginx.conf}
  redis_conf: {file: ./redis.conf}
  count_cgi: {file: ./count.sh}
secrets:
  db_password: {file: ./password.txt}
volumes:
  data: {}
"#;

pub const NGINX_CONF: &str = "user nobody nogroup;
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path /tmp/body;
  proxy_temp_path /tmp/proxy;
  fastcgi_temp_path /tmp/fastcgi;
  uwsgi_temp_path /tmp/uwsgi;
  scgi_temp_path /tmp/scgi;
  server {
    listen 80;
    location / { proxy_pass http://web:80/cgi-bin/count; }
  }
}
daemon off;
";

pub const REDIS_CONF: &str =
    "bind 0.0.0.0\nprotected-mode no\nport 6379\ndir /data\nappendonly yes\n";

pub const COUNT_CGI: &str = "#!/bin/sh
n=$(redis-cli -h db -a \"$(cat /run/secrets/db_password)\" --no-auth-warning INCR visits)
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo \"$GREETING, visit $n\"
";

/// Writes `app.yml` and the files it names into `dir`.
pub fn write_files(dir: &Path) -> Result<()> {
    for (f, text) in [
        ("app.yml", APP),
        ("nginx.conf", NGINX_CONF),
        ("redis.conf", REDIS_CONF),
        ("count.sh", COUNT_CGI),
        ("password.txt", "s3cret-pw"),
    ] {
        std::fs::write(dir.join(f), text)?;
    }
    Ok(())
}

/// Builds the two images from Debian's packages (once per testbed directory) and
/// imports them on every node as `app-nginx` and `app-redis`.
pub fn import_images(tb: &Testbed) -> Result<()> {
    let nginx: PathBuf = crate::debian_rootfs_tar(tb.dir(), "app-nginx", &["nginx"])?;
    let redis = crate::debian_rootfs_tar(tb.dir(), "app-redis", &["redis-server", "redis-tools"])?;
    for i in 0..tb.nodes.len() {
        for (tar, name) in [(&nginx, "app-nginx:latest"), (&redis, "app-redis:latest")] {
            tb.cli_ok(i, &["image", "import", &tar.display().to_string(), name])?;
        }
    }
    Ok(())
}
