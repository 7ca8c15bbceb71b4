//! Run notes: `OUTPUT_DIR/train.log` and the log, kept off the terminal while the dashboard
//! owns it.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Appends run notes to `OUTPUT_DIR/train.log`, and logs them unless the dashboard owns the
/// terminal (stderr lines would tear its screen).
#[derive(Clone)]
pub struct Notes {
    file: Arc<Mutex<Option<std::fs::File>>>,
    quiet: Arc<AtomicBool>,
}

impl Notes {
    pub fn new(dir: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("train.log"))
            .ok();
        Self {
            file: Arc::new(Mutex::new(file)),
            quiet: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_quiet(&self, q: bool) {
        self.quiet.store(q, Ordering::SeqCst);
    }

    pub fn info(&self, msg: &str) {
        if let Ok(mut f) = self.file.lock()
            && let Some(f) = f.as_mut()
        {
            let _ = writeln!(f, "{} {msg}", utc_now());
        }
        if !self.quiet.load(Ordering::SeqCst) {
            tracing::info!("{msg}");
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days; no time-zone database needed).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
