//! `jobkeeper explain namespace/job`: a read-only account of one Job for a person.

use kube::Client;

use crate::config::ExplainArgs;

pub async fn explain(_client: Client, args: &ExplainArgs) -> anyhow::Result<String> {
    anyhow::bail!("explain {}/{}: not implemented yet", args.job.0, args.job.1)
}
