//! Publishing a task's log lines to a manager that asked for them.

use crate::runtime::{ContainerStatus, Runtime};
use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher::{LogLine, LogSubscription, PublishLogsMessage};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Parses `<unix nanos> <stream> <text>` (the supervisor's format).
pub fn parse_line(line: &str) -> Option<LogLine> {
    let (ts, rest) = line.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(LogLine {
        timestamp_unix_nanos: ts.parse().ok()?,
        stream: stream.to_string(),
        data: text.as_bytes().to_vec(),
    })
}

const BATCH: usize = 256;

/// The text of the last `n` lines of a container's log (at most its last 16 KiB).
pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 << 10)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text
        .lines()
        .filter_map(parse_line)
        .map(|l| String::from_utf8_lossy(&l.data).into_owned())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The complete lines of the log from byte `pos` on; moves `pos` past them (a line still
/// being written is left for next time). A missing log is empty.
fn read_lines(path: &Path, pos: &mut u64) -> std::io::Result<Vec<LogLine>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(*pos))?;
    let mut buf = Vec::new();
    // At most a few MiB per pass: a huge log is sent in pieces.
    (&mut f).take(4 << 20).read_to_end(&mut buf)?;
    let complete = buf
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    *pos += complete as u64;
    Ok(String::from_utf8_lossy(&buf[..complete])
        .lines()
        .filter_map(parse_line)
        .collect())
}

/// [`read_lines`] off the async threads.
async fn read_blocking(path: &Path, pos: &mut u64) -> std::io::Result<Vec<LogLine>> {
    let p = path.to_path_buf();
    let mut at = *pos;
    let (lines, at) = tokio::task::spawn_blocking(move || read_lines(&p, &mut at).map(|l| (l, at)))
        .await
        .map_err(std::io::Error::other)??;
    *pos = at;
    Ok(lines)
}

/// One subscription's stream of PublishLogs messages. It follows the node's channel: after
/// a certificate renewal the next message goes out on a new stream made with the new
/// certificate (the managers stop accepting the old one shortly after), and the old
/// stream is closed cleanly. The managers keep the subscription across the switch.
struct Stream {
    channels: crate::managers::Channels,
    tx: mpsc::Sender<PublishLogsMessage>,
    call: tokio::task::JoinHandle<
        Result<tonic::Response<shoal_proto::dispatcher::PublishLogsResponse>, tonic::Status>,
    >,
}

impl Stream {
    fn open(mut channels: crate::managers::Channels) -> Stream {
        channels.mark_unchanged();
        let (tx, rx) = mpsc::channel::<PublishLogsMessage>(16);
        let mut client = DispatcherClient::new(channels.borrow().clone());
        let call = tokio::spawn(async move {
            client
                .publish_logs(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        Stream { channels, tx, call }
    }

    /// Sends `m`; false once the manager stopped listening.
    async fn send(&mut self, m: PublishLogsMessage) -> bool {
        if self.channels.has_changed().unwrap_or(false) {
            let next = Stream::open(self.channels.clone());
            let old = std::mem::replace(self, next);
            drop(old.tx);
            let _ = old.call.await;
        }
        self.tx.send(m).await.is_ok()
    }

    fn finished(&self) -> bool {
        self.tx.is_closed() || self.call.is_finished()
    }

    /// Sends the last message and waits for the call to end.
    async fn close(mut self, last: PublishLogsMessage) {
        let _ = self.send(last).await;
        drop(self.tx);
        let _ = self.call.await;
    }
}

/// Serves one subscription: sends the last `tail` lines (all if 0), then, if following,
/// new lines until the container has exited or the manager stops listening.
pub async fn publish(
    channels: crate::managers::Channels,
    runtime: Arc<dyn Runtime>,
    sub: LogSubscription,
    known: bool,
) {
    let mut out = Stream::open(channels);
    let sid = sub.id.clone();
    let msg = |lines: Vec<LogLine>, close: bool, error: String| PublishLogsMessage {
        subscription_id: sid.clone(),
        lines,
        close,
        error,
    };
    if !known {
        out.close(msg(
            vec![],
            true,
            format!("task {} is not on this node", sub.task_id),
        ))
        .await;
        return;
    }
    let path = runtime.log_path(&sub.task_id);
    let mut pos = 0u64;
    // The backlog, a bounded piece at a time; with --tail only the last lines are kept.
    let mut kept: std::collections::VecDeque<LogLine> = std::collections::VecDeque::new();
    loop {
        let lines = match read_blocking(&path, &mut pos).await {
            Ok(l) => l,
            Err(e) => {
                out.close(msg(
                    vec![],
                    true,
                    format!("cannot read the task's log: {e}"),
                ))
                .await;
                return;
            }
        };
        if lines.is_empty() {
            break;
        }
        if sub.tail > 0 {
            kept.extend(lines);
            while kept.len() as u64 > sub.tail {
                kept.pop_front();
            }
            continue;
        }
        for chunk in lines.chunks(BATCH) {
            if !out.send(msg(chunk.to_vec(), false, String::new())).await {
                return;
            }
        }
    }
    let kept: Vec<LogLine> = kept.into();
    for chunk in kept.chunks(BATCH) {
        if !out.send(msg(chunk.to_vec(), false, String::new())).await {
            return;
        }
    }
    if !sub.follow {
        out.close(msg(vec![], true, String::new())).await;
        return;
    }
    loop {
        let done = matches!(
            runtime.status(&sub.task_id),
            ContainerStatus::Exited(_) | ContainerStatus::Missing
        );
        let lines = read_blocking(&path, &mut pos).await.unwrap_or_default();
        for chunk in lines.chunks(BATCH) {
            if !out.send(msg(chunk.to_vec(), false, String::new())).await {
                return;
            }
        }
        if done || out.finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.close(msg(vec![], true, String::new())).await;
}
