//! One command on one session channel: stdin fed in chunks while stdout and
//! stderr are collected and logged line by line at debug level.

use crate::error::{err, Result};
use russh::client;
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::host::Output;

/// Bytes per write on a channel (russh's maximum packet size is 32 KiB).
const CHUNK: usize = 32 * 1024;

/// Why feeding stdin stopped early.
enum FeedError {
    /// Reading the local source failed: the remote command must not see EOF.
    Local(std::io::Error),
    /// The channel went away (the command exited without reading everything).
    Channel(russh::Error),
}

/// Feeds `stdin` to the channel and collects its output until it closes.
pub(super) async fn drive<R>(
    channel: Channel<client::Msg>,
    mut stdin: R,
    host: &str,
) -> Result<Output>
where
    R: AsyncRead + Unpin + Send,
{
    let (mut reader, writer) = channel.split();
    let writer = &writer;
    let feed = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = stdin.read(&mut buf).await.map_err(FeedError::Local)?;
            if n == 0 {
                break;
            }
            writer
                .data_bytes(buf[..n].to_vec())
                .await
                .map_err(FeedError::Channel)?;
        }
        writer.eof().await.map_err(FeedError::Channel)
    };
    tokio::pin!(feed);
    let mut feeding = true;
    let mut out = Output::default();
    let mut stdout_log = LineLog::new(host, "");
    let mut stderr_log = LineLog::new(host, "stderr: ");
    let mut ended_by = None;
    loop {
        tokio::select! {
            fed = &mut feed, if feeding => {
                feeding = false;
                match fed {
                    Ok(()) => {}
                    Err(FeedError::Channel(e)) => {
                        log::debug!("{host}: the command did not read all of its stdin: {e}");
                    }
                    Err(FeedError::Local(e)) => {
                        // No EOF: stop the command before it can use a truncated input.
                        let _ = writer.signal(Sig::TERM).await;
                        let _ = writer.close().await;
                        return Err(err!(e).context("reading the input for the remote command"));
                    }
                }
            }
            msg = reader.wait() => match msg {
                None | Some(ChannelMsg::Close) => break,
                Some(ChannelMsg::Data { data }) => {
                    stdout_log.push(&data);
                    out.stdout.extend_from_slice(&data);
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    stderr_log.push(&data);
                    out.stderr.extend_from_slice(&data);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => out.status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, error_message, .. }) => {
                    ended_by = Some(format!("killed by signal {signal_name:?} {error_message}"));
                }
                Some(ChannelMsg::Failure) => {
                    ended_by = Some("the server refused to run the command".to_string());
                }
                Some(_) => {}
            }
        }
    }
    stdout_log.flush();
    stderr_log.flush();
    if out.status.is_none() {
        let why = ended_by.unwrap_or_else(|| "the channel closed without an exit status".into());
        log::debug!("{host}: {why}");
        // Said on stderr so that `Host::run`'s error shows why there is no status.
        if !out.stderr.is_empty() && !out.stderr.ends_with(b"\n") {
            out.stderr.push(b'\n');
        }
        out.stderr
            .extend_from_slice(format!("[pdsup] {}\n", why.trim()).as_bytes());
    }
    Ok(out)
}

/// Streams remote output to `log::debug!`, one line at a time.
struct LineLog<'a> {
    host: &'a str,
    prefix: &'static str,
    partial: Vec<u8>,
}

impl<'a> LineLog<'a> {
    fn new(host: &'a str, prefix: &'static str) -> Self {
        LineLog {
            host,
            prefix,
            partial: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8]) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        for line in split_lines(&mut self.partial, data) {
            self.emit(&line);
        }
    }

    fn flush(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        log::debug!(
            "{}: {}{}",
            self.host,
            self.prefix,
            line.trim_end_matches('\r')
        );
    }
}

/// Appends `data` to `partial` and takes out every complete line (without its
/// newline). A long run without newlines (binary output) comes out in pieces.
fn split_lines(partial: &mut Vec<u8>, data: &[u8]) -> Vec<Vec<u8>> {
    const LONGEST: usize = 4096;
    partial.extend_from_slice(data);
    let mut lines = Vec::new();
    while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = partial.drain(..=nl).collect();
        line.pop();
        lines.push(line);
    }
    if partial.len() > LONGEST {
        lines.push(std::mem::take(partial));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_logged_line_by_line() {
        let mut partial = Vec::new();
        assert_eq!(split_lines(&mut partial, b"one\ntw"), vec![b"one".to_vec()]);
        assert_eq!(partial, b"tw");
        assert_eq!(
            split_lines(&mut partial, b"o\n\nthree"),
            vec![b"two".to_vec(), b"".to_vec()]
        );
        assert_eq!(partial, b"three");
        let blob = vec![b'x'; 5000];
        assert_eq!(split_lines(&mut partial, &blob).len(), 1);
        assert!(partial.is_empty());
    }
}
