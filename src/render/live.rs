//! Hot reload: [`LiveTemplates`] holds the last good [`Templates`] and swaps in a new
//! version only when it checks clean, so a half-saved or broken edit never stops
//! sending (the last good version keeps going out).

use super::{Problem, Templates};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// (modified time, size) of every file under the templates dir, by path.
type Fingerprint = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

/// Shared, cheaply cloneable handle on the current templates.
#[derive(Clone, Debug)]
pub struct LiveTemplates {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    current: RwLock<Arc<Templates>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Fingerprint of the last attempt (good or refused): unchanged files are not
    /// re-checked, and a refused change is reported once.
    seen: Fingerprint,
    problems: Vec<Problem>,
}

impl LiveTemplates {
    /// Loads `dir` (or the embedded defaults when it does not exist) and checks
    /// `campaigns`; refuses to start on any problem.
    pub fn load(dir: &Path, campaigns: &[(String, String)]) -> Result<Self, Vec<Problem>> {
        // Fingerprint before reading: an edit racing the read is picked up next poll.
        let seen = fingerprint(dir);
        let templates = Templates::load_or_embedded(dir)?;
        let problems = templates.check(campaigns);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self::with_fingerprint(dir, templates, seen))
    }

    /// Wraps already loaded templates; `dir` is where later reloads read from.
    pub fn new(dir: &Path, templates: Templates) -> Self {
        Self::with_fingerprint(dir, templates, fingerprint(dir))
    }

    fn with_fingerprint(dir: &Path, templates: Templates, seen: Fingerprint) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                current: RwLock::new(Arc::new(templates)),
                state: Mutex::new(State {
                    seen,
                    problems: Vec::new(),
                }),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The last good templates. Hold the `Arc` for one email (or a batch); a reload
    /// does not disturb renders in progress.
    pub fn current(&self) -> Arc<Templates> {
        // A poisoned lock still holds a good value: the swap is a single assignment.
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Problems of the last refused change; empty after a good (re)load.
    pub fn last_problems(&self) -> Vec<Problem> {
        self.lock_state().problems.clone()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the dir when any file's mtime or size changed since the last attempt,
    /// checks it, and swaps only when clean. `Ok(true)`: new templates in use;
    /// `Ok(false)`: nothing changed since the last attempt (a refused change stays
    /// refused, see [`last_problems`](Self::last_problems)); `Err`: change refused,
    /// the last good version stays current.
    pub fn reload(&self, campaigns: &[(String, String)]) -> Result<bool, Vec<Problem>> {
        let mut state = self.lock_state();
        let now = fingerprint(&self.inner.dir);
        if now == state.seen {
            return Ok(false);
        }
        state.seen = now;
        let problems = match Templates::load(&self.inner.dir) {
            Ok(t) => {
                let problems = t.check(campaigns);
                if problems.is_empty() {
                    *self
                        .inner
                        .current
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
                    state.problems.clear();
                    return Ok(true);
                }
                problems
            }
            Err(problems) => problems,
        };
        state.problems = problems.clone();
        Err(problems)
    }
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Fingerprint::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path(), (meta.modified().ok(), meta.len()));
            }
        }
    }
    out
}
