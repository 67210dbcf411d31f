//! Headless Chromium for the browser tests (preview pages, the report page).

use std::path::Path;

/// Headless Chromium, as the content team's browser: `--dump-dom` and `--screenshot`.
/// Missing Chromium fails in CI (which installs it) and is reported and skipped
/// elsewhere.
pub fn chromium(args: &[&str], url: &str) -> Option<std::process::Output> {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(bin) = bin else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (see .ci/run)"
        );
        eprintln!("chromium not installed: browser test skipped");
        return None;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .args([
            "--no-first-run",
            "--disable-sync",
            "--disable-quic",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    Some(out)
}

/// A PNG with more than one colour in it.
pub fn non_blank_png(path: &Path) -> bool {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let distinct: std::collections::HashSet<&[u8]> = pixels.iter().step_by(97).copied().collect();
    info.width > 100 && info.height > 100 && distinct.len() > 10
}
