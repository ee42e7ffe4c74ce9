//! A local SMTP server for tests: it speaks enough of RFC 5321 (EHLO, HELO, MAIL, RCPT, DATA,
//! RSET, NOOP, QUIT) for a real client to deliver mail, and keeps every message it accepts.
//! A test can make it reply to the next transactions with a temporary or permanent failure.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A message the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The MAIL FROM address.
    pub from: String,
    /// The RCPT TO addresses.
    pub to: Vec<String>,
    /// The message as sent after DATA, headers and body, with dot-stuffing removed.
    pub data: String,
}

impl ReceivedMail {
    /// Returns the value of the first header with this name, unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut lines = self.data.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            if line.is_empty() {
                return None;
            }
            if let Some((key, value)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                let mut value = value.trim().to_owned();
                while let Some(next) = lines.peek() {
                    if next.starts_with(' ') || next.starts_with('\t') {
                        value.push(' ');
                        value.push_str(next.trim());
                        lines.next();
                    } else {
                        break;
                    }
                }
                return Some(value);
            }
        }
        None
    }
}

#[derive(Debug, Default)]
struct State {
    received: Vec<ReceivedMail>,
    /// Replies to give to the next MAIL commands instead of accepting them.
    failures: VecDeque<String>,
    /// Messages still to keep without replying, as a server that stalls after DATA.
    stall: usize,
    /// Messages kept without a reply so far.
    stalled: usize,
}

/// A running local SMTP server. It stops when dropped.
#[derive(Debug)]
pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    if let Err(error) = session(stream, state).await {
                        tracing::debug!(%error, "Test SMTP session ended with an error");
                    }
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Returns the port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Returns every message accepted so far.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.lock().received.clone()
    }

    /// Rejects the next `count` transactions with 451 (try again later).
    pub fn fail_temporarily(&self, count: usize) {
        let mut state = self.lock();
        for _ in 0..count {
            state
                .failures
                .push_back("451 4.3.0 Mailbox temporarily unavailable".to_owned());
        }
    }

    /// Rejects the next transaction with 550 (rejected for good).
    pub fn reject_next(&self) {
        self.lock()
            .failures
            .push_back("550 5.1.1 Mailbox does not exist".to_owned());
    }

    /// Keeps the next message but never replies to its DATA, so the client cannot tell
    /// whether it was delivered.
    pub fn stall_next(&self) {
        self.lock().stall += 1;
    }

    /// Returns the number of messages kept without a reply so far.
    pub fn stalled(&self) -> usize {
        self.lock().stalled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn session(stream: TcpStream, state: Arc<Mutex<State>>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write
        .write_all(b"220 localhost test SMTP ready\r\n")
        .await?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => "250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8".to_owned(),
            "HELO" => "250 localhost".to_owned(),
            "MAIL" => {
                let failure = state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .failures
                    .pop_front();
                match failure {
                    Some(reply) => reply,
                    None => {
                        from = address_in(&command);
                        to.clear();
                        "250 2.1.0 OK".to_owned()
                    }
                }
            }
            "RCPT" => {
                to.push(address_in(&command));
                "250 2.1.5 OK".to_owned()
            }
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(unstuffed);
                }
                let reply = {
                    let mut state = state
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    state.received.push(ReceivedMail {
                        from: from.clone(),
                        to: to.clone(),
                        data,
                    });
                    let stall = state.stall > 0;
                    if stall {
                        state.stall -= 1;
                        state.stalled += 1;
                    }
                    (!stall).then(|| format!("250 2.0.0 Queued as test-{}", state.received.len()))
                };
                match reply {
                    Some(reply) => reply,
                    None => {
                        // Hold the connection open without a reply until the client gives up.
                        tokio::time::sleep(std::time::Duration::from_secs(3_600)).await;
                        return Ok(());
                    }
                }
            }
            "RSET" => {
                from.clear();
                to.clear();
                "250 OK".to_owned()
            }
            "NOOP" => "250 OK".to_owned(),
            "QUIT" => {
                write.write_all(b"221 Bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 Command not recognised".to_owned(),
        };
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\r\n").await?;
    }
}

/// Returns the address between angle brackets in a MAIL or RCPT command.
fn address_in(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}
