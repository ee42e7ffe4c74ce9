//! The channels a message goes out on. Each is a [`Channel`]: email over SMTP, text messages
//! through an HTTP SMS provider, and letters written to a print folder. Another channel plugs
//! in by implementing the trait and registering it in [`Channels`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use crate::messaging::config::{
    EmailConfig, MessagingConfig, SmsConfig, SmtpSecurity, read_secret,
};

/// A message to send: one recipient on one channel.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// The message id, which channels pass on as their idempotency key or message id.
    pub(crate) id: String,
    pub(crate) laestab: String,
    pub(crate) recipient_name: String,
    /// The email address, mobile number or postal address.
    pub(crate) recipient_address: String,
    pub(crate) subject: String,
    pub(crate) body: String,
    /// The letter's PDF, where there is one.
    pub(crate) document: Option<Vec<u8>>,
}

/// The failure of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// Worth trying again later, optionally no sooner than the delay the server asked for.
    Transient(String, Option<Duration>),
    /// The server or provider rejected the message for good.
    Permanent(String),
}

impl SendError {
    pub(crate) fn detail(&self) -> &str {
        match self {
            Self::Transient(detail, _) | Self::Permanent(detail) => detail,
        }
    }
}

/// The future a channel returns: the provider's reference for the delivered message.
pub(crate) type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<String, SendError>> + Send + 'a>>;

/// A way to reach a parent or carer.
pub(crate) trait Channel: Send + Sync + std::fmt::Debug {
    /// Sends one message.
    fn send<'a>(&'a self, message: &'a Outgoing) -> SendFuture<'a>;

    /// True when the channel drops a repeat of a message id by itself, so that a message whose
    /// sender stopped mid-attempt can be sent again without reaching the parent twice.
    fn drops_repeats(&self) -> bool;
}

/// The channels configured, by name ("email", "sms", "letter").
#[derive(Debug, Clone, Default)]
pub(crate) struct Channels {
    by_name: BTreeMap<&'static str, Arc<dyn Channel>>,
}

impl Channels {
    /// Builds the channels the settings configure. Letters are always available.
    pub(crate) fn from_config(
        config: &MessagingConfig,
        default_print_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut by_name: BTreeMap<&'static str, Arc<dyn Channel>> = BTreeMap::new();
        if let Some(email) = &config.email {
            by_name.insert("email", Arc::new(SmtpChannel::new(email)?));
        }
        if let Some(sms) = &config.sms {
            by_name.insert("sms", Arc::new(SmsChannel::new(sms)?));
        }
        let print_dir = config
            .letters
            .print_dir
            .clone()
            .unwrap_or(default_print_dir);
        by_name.insert("letter", Arc::new(PrintFolder { dir: print_dir }));
        Ok(Self { by_name })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Channel>> {
        self.by_name.get(name)
    }
}

/// Email over SMTP, with lettre.
pub(crate) struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpChannel {
    // The transport contains the credentials, so only the sender is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpChannel")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpChannel {
    fn new(config: &EmailConfig) -> anyhow::Result<Self> {
        let host = config.smtp_host.trim();
        let mut builder = match config.security {
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
            SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        }
        .port(config.smtp_port)
        .timeout(Some(Duration::from_secs(config.timeout_seconds)));
        if let (Some(username), Some(password_file)) = (&config.username, &config.password_file) {
            let password = read_secret(password_file, "SMTP password")?;
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        Ok(Self {
            transport: builder.build(),
            from: config.from.parse()?,
        })
    }

    fn build(&self, message: &Outgoing) -> Result<lettre::Message, SendError> {
        let to: Mailbox = format!("{} <{}>", message.recipient_name, message.recipient_address)
            .parse()
            .or_else(|_| message.recipient_address.parse())
            .map_err(|error| {
                SendError::Permanent(format!("invalid recipient email address: {error}"))
            })?;
        let builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject.clone())
            // A fixed Message-ID lets mail systems recognise a repeat of the same message.
            .message_id(Some(format!(
                "<{}.{}@rollcall>",
                message.id, message.laestab
            )));
        let built = match &message.document {
            None => builder
                .header(ContentType::TEXT_PLAIN)
                .body(message.body.clone()),
            Some(pdf) => builder.multipart(
                MultiPart::mixed()
                    .singlepart(SinglePart::plain(message.body.clone()))
                    .singlepart(Attachment::new(format!("{}.pdf", message.id)).body(
                        pdf.clone(),
                        ContentType::parse("application/pdf").expect("valid content type"),
                    )),
            ),
        };
        built.map_err(|error| SendError::Permanent(format!("cannot build the email: {error}")))
    }
}

impl Channel for SmtpChannel {
    fn send<'a>(&'a self, message: &'a Outgoing) -> SendFuture<'a> {
        Box::pin(async move {
            let email = self.build(message)?;
            match self.transport.send(email).await {
                Ok(response) => Ok(response.message().collect::<Vec<_>>().join(" ")),
                Err(error) if error.is_permanent() => Err(SendError::Permanent(format!(
                    "mail server rejected it: {error}"
                ))),
                Err(error) => Err(SendError::Transient(
                    format!("mail server unavailable: {error}"),
                    None,
                )),
            }
        })
    }

    fn drops_repeats(&self) -> bool {
        false
    }
}

/// Text messages through an HTTP provider: one JSON POST per message, authorised with a
/// bearer key, with the message id as the Idempotency-Key header so the provider drops a
/// repeat. The request and reply are documented in docs/cases.md.
pub(crate) struct SmsChannel {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: Option<String>,
    sender: String,
}

impl std::fmt::Debug for SmsChannel {
    // The API key stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsChannel")
            .field("url", &self.url.as_str())
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct SmsAccepted {
    id: String,
}

impl SmsChannel {
    fn new(config: &SmsConfig) -> anyhow::Result<Self> {
        let api_key = config
            .api_key_file
            .as_ref()
            .map(|path| read_secret(path, "SMS API key"))
            .transpose()?;
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(config.timeout_seconds))
                .build()?,
            url: reqwest::Url::parse(&config.url)?,
            api_key,
            sender: config.sender.clone(),
        })
    }
}

/// Reads a Retry-After header given in seconds.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl Channel for SmsChannel {
    fn send<'a>(&'a self, message: &'a Outgoing) -> SendFuture<'a> {
        Box::pin(async move {
            let mut request = self
                .client
                .post(self.url.clone())
                .header("Idempotency-Key", &message.id)
                .json(&serde_json::json!({
                    "to": message.recipient_address,
                    "from": self.sender,
                    "body": message.body,
                    "reference": message.id,
                }));
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.map_err(|error| {
                SendError::Transient(format!("SMS provider unreachable: {error}"), None)
            })?;
            let status = response.status();
            if status.is_success() {
                let accepted: SmsAccepted = response.json().await.map_err(|error| {
                    // The provider took the message but its reply is unreadable; sending again
                    // is safe because it drops repeats of the idempotency key.
                    SendError::Transient(
                        format!("SMS provider accepted with an unreadable reply: {error}"),
                        None,
                    )
                })?;
                return Ok(accepted.id);
            }
            let wait = retry_after(&response);
            let text = response.text().await.unwrap_or_default();
            let detail = format!(
                "SMS provider replied {status}: {}",
                text.chars().take(200).collect::<String>()
            );
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status.is_server_error()
            {
                Err(SendError::Transient(detail, wait))
            } else {
                Err(SendError::Permanent(detail))
            }
        })
    }

    fn drops_repeats(&self) -> bool {
        true
    }
}

/// Letters, written as PDF files to a folder that the office prints and posts from.
#[derive(Debug)]
pub(crate) struct PrintFolder {
    dir: PathBuf,
}

impl Channel for PrintFolder {
    fn send<'a>(&'a self, message: &'a Outgoing) -> SendFuture<'a> {
        Box::pin(async move {
            let Some(pdf) = &message.document else {
                return Err(SendError::Permanent(
                    "the letter has no PDF to print".to_owned(),
                ));
            };
            let folder = self.dir.join(&message.laestab);
            tokio::fs::create_dir_all(&folder).await.map_err(|error| {
                SendError::Transient(
                    format!("cannot create print folder {}: {error}", folder.display()),
                    None,
                )
            })?;
            let path = folder.join(format!("{}.pdf", message.id));
            // Written under a temporary name and renamed, so the office never prints half a
            // letter.
            let partial = folder.join(format!(".{}.pdf.partial", message.id));
            tokio::fs::write(&partial, pdf).await.map_err(|error| {
                SendError::Transient(format!("cannot write {}: {error}", partial.display()), None)
            })?;
            tokio::fs::rename(&partial, &path).await.map_err(|error| {
                SendError::Transient(format!("cannot write {}: {error}", path.display()), None)
            })?;
            Ok(path.display().to_string())
        })
    }

    fn drops_repeats(&self) -> bool {
        // Writing the same file again replaces it, so the office prints it once.
        true
    }
}
