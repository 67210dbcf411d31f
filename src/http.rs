//! placeholder
pub async fn serve(_s: crate::config::Settings, _w: bool) -> Result<(), String> {
    Err("not yet".into())
}
