//! Logging: tracing to stderr, as text or JSON.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// kube-runtime opens an info-level span per sync ("reconciling object"), which would
/// prefix every line; keep it for debug logging unless the filter names kube_runtime.
fn with_defaults(filter: &str) -> String {
    if filter.contains("kube_runtime") {
        filter.to_string()
    } else {
        format!("{filter},kube_runtime=warn")
    }
}

pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(with_defaults(filter))
        .map_err(|e| anyhow::anyhow!("--log-level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiets_kube_runtime_spans_unless_asked() {
        assert_eq!(with_defaults("info"), "info,kube_runtime=warn");
        assert_eq!(
            with_defaults("debug,kube_runtime=debug"),
            "debug,kube_runtime=debug"
        );
    }
}
