//! `recording:`: where records go, segment size, retention, the queue, and what happens when
//! a record cannot be written.

use crate::config::at_field;
use crate::config::units::{ByteSize, HumanDuration};
use crate::config::RecordingConfig;
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
        Ok(RecordingConfig {
            dir: r.dir,
            segment_size: r.segment_size.0,
            max_age: r.max_age.0,
            max_size: r.max_size.0,
            queue: r.queue,
            reject_on_failure,
            stdout: r.stdout,
            max_body: r.max_body.0,
        })
    }
}
