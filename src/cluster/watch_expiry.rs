//! A watch the apiserver ends with 410 Gone.

use kube::runtime::watcher;
use tracing::info;

/// 410 Gone ("too old resource version"): the watch resumed from a resourceVersion the
/// apiserver's watch cache no longer holds, as after a disconnection longer than the
/// cache's window. kube-runtime's watcher lists again and the store is rebuilt from the
/// list, so nothing is lost: a routine event, not an error.
pub fn is_expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// Says at info that the `watch` expired and lists again, if that is what `error` is.
pub fn log_if_expired<K>(watch: &'static str, event: &watcher::Result<K>) {
    if let Err(error @ watcher::Error::WatchError(status)) = event
        && is_expired(error)
    {
        info!(watch, error = %status.message, "the watch expired (410 Gone); relisting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn watch_error(code: u16) -> watcher::Error {
        watcher::Error::WatchError(Box::new(Status {
            code,
            message: "too old resource version: 1 (2)".into(),
            reason: "Expired".into(),
            ..Status::failure("", "")
        }))
    }

    #[test]
    fn only_a_410_during_the_watch_is_an_expiry() {
        assert!(is_expired(&watch_error(410)));
        assert!(!is_expired(&watch_error(500)));
        assert!(!is_expired(&watcher::Error::NoResourceVersion));
    }
}
