//! `recording:`: where records go, segment size, retention, the queue, and what happens when
//! a record cannot be written.

use crate::config::at_field;
use crate::config::units::{ByteSize, HumanDuration};
use crate::config::{secret, CheckpointSettings, RecordingConfig};
use crate::util::ed25519::SigningKey;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecording {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default = "default_segment")]
    segment_size: ByteSize,
    #[serde(default = "default_max_age")]
    max_age: HumanDuration,
    #[serde(default = "default_max_size")]
    max_size: ByteSize,
    #[serde(default = "default_queue")]
    queue: usize,
    #[serde(default)]
    on_failure: Option<String>,
    #[serde(default)]
    stdout: bool,
    #[serde(default = "default_record_body")]
    max_body: ByteSize,
    /// Ed25519 key for checkpoints: `${file:PATH}` of a PEM or of the base64 of a 32-byte seed.
    #[serde(default)]
    signing_key: Option<String>,
    #[serde(default)]
    checkpoints: RawCheckpoints,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoints {
    #[serde(default = "default_every_records")]
    every_records: u64,
    #[serde(default = "default_every")]
    every: HumanDuration,
    #[serde(default = "default_true")]
    stdout: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn default_every_records() -> u64 {
    1000
}
fn default_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_true() -> bool {
    true
}

impl Default for RawCheckpoints {
    fn default() -> Self {
        RawCheckpoints {
            every_records: default_every_records(),
            every: default_every(),
            stdout: true,
            url: None,
            ca_file: None,
        }
    }
}

fn default_segment() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 24 * 3600))
}
fn default_max_size() -> ByteSize {
    ByteSize(10 << 30)
}
fn default_queue() -> usize {
    10_000
}
fn default_record_body() -> ByteSize {
    ByteSize(1 << 20)
}

impl Default for RawRecording {
    fn default() -> Self {
        RawRecording {
            dir: None,
            segment_size: default_segment(),
            max_age: default_max_age(),
            max_size: default_max_size(),
            queue: default_queue(),
            on_failure: None,
            stdout: false,
            max_body: default_record_body(),
            signing_key: None,
            checkpoints: RawCheckpoints::default(),
        }
    }
}

impl TryFrom<RawRecording> for RecordingConfig {
    type Error = String;
    fn try_from(r: RawRecording) -> Result<Self, String> {
        let reject_on_failure = match r.on_failure.as_deref() {
            None | Some("reject") => true,
            Some("continue") => false,
            Some(o) => {
                return Err(at_field(
                    "on_failure",
                    format!("recording.on_failure `{o}` must be reject or continue"),
                ))
            }
        };
        if r.queue == 0 || r.segment_size.0 == 0 {
            return Err(at_field(
                "queue",
                "recording.queue and segment_size must be greater than 0".into(),
            ));
        }
        let c = r.checkpoints;
        if c.every_records == 0 || c.every.0.is_zero() {
            return Err(at_field(
                "checkpoints",
                "recording.checkpoints.every_records and every must be greater than 0".into(),
            ));
        }
        if let Some(u) = &c.url {
            if !u.starts_with("https://") {
                return Err(at_field(
                    "checkpoints",
                    format!("recording.checkpoints.url `{u}` must be https:// (checkpoints leave the machine over verified TLS)"),
                ));
            }
        }
        let signing_key = match &r.signing_key {
            None => None,
            Some(t) => {
                let s = secret::resolve_text(t, secret::current_source())
                    .map_err(|e| at_field("signing_key", format!("recording.signing_key: {e}")))?;
                if secret::placeholders_active() {
                    None
                } else {
                    Some(std::sync::Arc::new(SigningKey::from_text(s.expose()).map_err(
                        |e| at_field("signing_key", format!("recording.signing_key: {e}; generate one with `openssl genpkey -algorithm ed25519`")),
                    )?))
                }
            }
        };
        Ok(RecordingConfig {
            dir: r.dir,
            segment_size: r.segment_size.0,
            max_age: r.max_age.0,
            max_size: r.max_size.0,
            queue: r.queue,
            reject_on_failure,
            stdout: r.stdout,
            max_body: r.max_body.0,
            signing_key,
            checkpoints: CheckpointSettings {
                every_records: c.every_records,
                every: c.every.0,
                stdout: c.stdout,
                url: c.url,
                ca_file: c.ca_file,
            },
        })
    }
}
