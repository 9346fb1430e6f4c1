//! A process-wide bound on the pod bodies being created at once.
//!
//! Each create builds its pod from the Job's template, encodes it and holds both until
//! the apiserver answers. With up to `--concurrency` Jobs syncing and
//! [`super::execute::POD_WRITE_PARALLELISM`] creates in flight per Job, templates of a
//! megabyte would need gigabytes; this budget caps what all creates hold together, so
//! memory does not depend on how big a template a Job author writes. A create larger than
//! the whole budget waits for it to be free and then runs alone.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Bytes of pod bodies in flight across every sync.
pub const CREATE_BYTES_IN_FLIGHT: usize = 32 << 20;
/// The budget's unit: permits are kibibytes.
const UNIT: usize = 1024;
/// A built pod takes about this many times its JSON size while it is encoded and sent
/// (the object, its encoding, the request buffer).
const OVERHEAD: usize = 3;

#[derive(Debug)]
pub struct CreateBudget {
    permits: Semaphore,
    total: u32,
}

impl Default for CreateBudget {
    fn default() -> Self {
        Self::new(CREATE_BYTES_IN_FLIGHT)
    }
}

impl CreateBudget {
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from((bytes / UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Semaphore::new(total as usize),
            total,
        }
    }

    /// Waits until one pod built from a template of `template_bytes` (its JSON size) fits,
    /// and holds that share until the permit is dropped.
    pub async fn reserve(&self, template_bytes: usize) -> SemaphorePermit<'_> {
        let units = self.units_for(template_bytes);
        self.permits
            .acquire_many(units)
            .await
            .expect("the create budget's semaphore is never closed")
    }

    fn units_for(&self, template_bytes: usize) -> u32 {
        let bytes = template_bytes.saturating_mul(OVERHEAD);
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        units.clamp(1, self.total)
    }

    /// Bytes reserved right now (for the metric and tests).
    pub fn in_use(&self) -> usize {
        (self.total as usize).saturating_sub(self.permits.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_template_larger_than_the_budget_takes_all_of_it_and_runs_alone() {
        let budget = CreateBudget::new(64 * UNIT);
        let big = budget.reserve(10 << 20).await;
        assert_eq!(budget.in_use(), 64 * UNIT);
        assert_eq!(
            budget.permits.available_permits(),
            0,
            "nothing else fits while it runs"
        );
        drop(big);
        let _small = budget.reserve(1).await;
        assert_eq!(budget.in_use(), UNIT);
    }

    #[tokio::test]
    async fn shares_grow_with_the_template() {
        let budget = CreateBudget::new(1 << 20);
        let a = budget.reserve(100 * UNIT).await;
        assert_eq!(budget.in_use(), 300 * UNIT);
        let b = budget.reserve(0).await;
        assert_eq!(
            budget.in_use(),
            301 * UNIT,
            "an empty template still takes a unit"
        );
        drop((a, b));
        assert_eq!(budget.in_use(), 0);
    }
}
