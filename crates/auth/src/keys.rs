//! The identity provider's public signing keys, read from a file or fetched over HTTPS and
//! read again on a schedule so rotated keys are picked up without a restart.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};

use crate::settings::KeySource;

/// The shortest gap between two reads of the key set prompted by tokens with an unknown key id,
/// so a flood of such tokens cannot turn into a flood of requests to the identity provider.
const UNKNOWN_KEY_REFRESH_GAP: Duration = Duration::from_secs(30);

/// The current key set and where it comes from.
#[derive(Debug)]
pub(crate) struct KeyStore {
    source: KeySource,
    client: reqwest::Client,
    keys: RwLock<Arc<JwkSet>>,
    /// Serialises reads of the key set.
    reading: tokio::sync::Mutex<()>,
    /// When a token with an unknown key id last prompted a read.
    last_prompted: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyStore {
    /// Reads the key set for the first time. A server does not start without keys.
    pub(crate) async fn load(source: KeySource) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTPS client for the key set")?;
        let keys = read(&source, &client).await?;
        Ok(KeyStore {
            source,
            client,
            keys: RwLock::new(Arc::new(keys)),
            reading: tokio::sync::Mutex::new(()),
            last_prompted: tokio::sync::Mutex::new(None),
        })
    }

    pub(crate) fn source(&self) -> &KeySource {
        &self.source
    }

    /// The keys as last read.
    pub(crate) fn current(&self) -> Arc<JwkSet> {
        match self.keys.read() {
            Ok(keys) => Arc::clone(&keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the key set again. On failure the keys already held stay in use.
    pub(crate) async fn refresh(&self) -> anyhow::Result<()> {
        let _reading = self.reading.lock().await;
        let keys = read(&self.source, &self.client).await?;
        let count = keys.keys.len();
        match self.keys.write() {
            Ok(mut held) => *held = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
        tracing::info!(source = %self.source, keys = count, "Read the token signing keys");
        Ok(())
    }

    /// Reads the key set again for a token whose key id is unknown, unless another such token
    /// prompted a read in the last few seconds. Returns true when the keys were read.
    pub(crate) async fn refresh_for_unknown_key(&self) -> bool {
        {
            let mut last_prompted = self.last_prompted.lock().await;
            if last_prompted.is_some_and(|at| at.elapsed() < UNKNOWN_KEY_REFRESH_GAP) {
                return false;
            }
            *last_prompted = Some(Instant::now());
        }
        match self.refresh().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(source = %self.source, error = format!("{error:#}"), "Cannot read the token signing keys; keeping the ones held");
                false
            }
        }
    }

    /// Reads the key set on a schedule until the task is aborted.
    pub(crate) fn spawn_refresh(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if let Err(error) = self.refresh().await {
                    tracing::warn!(source = %self.source, error = format!("{error:#}"), retry_in_secs = every.as_secs(), "Cannot read the token signing keys; keeping the ones held");
                }
            }
        })
    }
}

async fn read(source: &KeySource, client: &reqwest::Client) -> anyhow::Result<JwkSet> {
    let bytes = match source {
        KeySource::File(path) => tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read the key set file {}", path.display()))?,
        KeySource::Url(url) => {
            let response = client
                .get(url)
                .send()
                .await
                .with_context(|| format!("cannot fetch the key set from {url}"))?;
            let status = response.status();
            if !status.is_success() {
                bail!("the key set address {url} returned {status}: check jwks_url");
            }
            response
                .bytes()
                .await
                .with_context(|| format!("cannot read the key set from {url}"))?
                .to_vec()
        }
    };
    parse(&bytes).with_context(|| format!("invalid key set from {source}"))
}

/// Parses a JSON Web Key Set and checks it contains at least one signing key.
pub(crate) fn parse(bytes: &[u8]) -> anyhow::Result<JwkSet> {
    let keys: JwkSet = serde_json::from_slice(bytes).context(
        "expected a JSON Web Key Set: an object with a \"keys\" list, as the identity provider \
         publishes it",
    )?;
    let signing = keys
        .keys
        .iter()
        .filter(|key| !matches!(key.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .count();
    if signing == 0 {
        bail!("the key set contains no signing keys");
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_needs_a_signing_key() {
        assert!(format!("{:#}", parse(b"{}").expect_err("no keys")).contains("JSON Web Key Set"));
        assert!(
            format!("{:#}", parse(br#"{"keys":[]}"#).expect_err("empty"))
                .contains("no signing keys")
        );
        let ed = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert_eq!(parse(ed).expect("valid").keys.len(), 1);
    }
}
