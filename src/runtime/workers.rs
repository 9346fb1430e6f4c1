//! The sync workers: `--concurrency` Jobs sync at once, and a Job waiting for a worker gets
//! one in the order it asked, first come, first served.
//!
//! kube-runtime's own concurrency limit parks the Jobs that wait for a worker in a hash set
//! and, when a worker frees up, takes the first Job the set's iteration yields. Under
//! saturation a Job placed late in that order waits while Jobs placed early are served again
//! and again: in the half-size bench at 20/30 the first Jobs' pods finished at 2 s and were
//! counted after 100 s and more, while the median Job was served 2 s after its pod
//! finished. So the controller lets kube-runtime start every triggered sync at once, and
//! each waits here for its turn on a fair semaphore. A Job triggered again while it waits
//! is still one waiter (kube-runtime never runs two syncs of one Job), and its sync reads
//! the caches only once it has a worker.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// The workers' turns, handed out in the order asked.
pub struct Workers {
    permits: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
}

impl Workers {
    /// `count` workers, and the sender that stops handing out turns (send `true`, or drop
    /// it) so that the syncs still waiting end at once instead of running one by one while
    /// the controller shuts down.
    pub fn new(count: u16) -> (Workers, watch::Sender<bool>) {
        let (stop, stopping) = watch::channel(false);
        let workers = Workers {
            permits: Arc::new(Semaphore::new(usize::from(count.max(1)))),
            stopping,
        };
        (workers, stop)
    }

    /// A worker, held until the returned permit drops; None once the controller stops.
    pub async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            biased;
            // Err: the sender is gone with the controller that owned it.
            _ = stopping.wait_for(|stop| *stop) => None,
            permit = self.permits.clone().acquire_owned() => permit.ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use futures::StreamExt;
    use k8s_openapi::api::batch::v1::Job;
    use kube::runtime::controller::{self, Action, Controller};
    use kube::runtime::reflector::{self, ObjectRef};
    use kube::runtime::watcher::Event;

    use super::*;

    const JOBS: usize = 40;

    /// `JOBS` Jobs triggered one after another while the first sync holds the only worker,
    /// through a kube-runtime controller run as the runtime runs it; the order their syncs
    /// ran in. `limit`: kube-runtime's own concurrency limit instead of [`Workers`].
    async fn served_order(limit: bool) -> Vec<usize> {
        tokio::time::pause();
        let (store, mut writer) = reflector::store::<Job>();
        writer.apply_watcher_event(&Event::Init);
        for i in 0..JOBS {
            let mut job = Job::default();
            job.metadata.name = Some(format!("job-{i:02}"));
            job.metadata.namespace = Some("ns".into());
            writer.apply_watcher_event(&Event::InitApply(job));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let (workers, _stop) = Workers::new(1);
        let context = Arc::new((workers, Mutex::new(Vec::new()), limit));
        let (trigger, triggers) = futures::channel::mpsc::unbounded();
        let concurrency = if limit { 1 } else { 0 };
        let run = Controller::for_stream(futures::stream::pending(), store)
            .reconcile_on(triggers)
            .with_config(controller::Config::default().concurrency(concurrency))
            .run(
                |job: Arc<Job>, context: Arc<(Workers, Mutex<Vec<usize>>, bool)>| async move {
                    let (workers, served, limit) = &*context;
                    let _turn = if *limit { None } else { workers.turn().await };
                    let name = job.metadata.name.clone().unwrap_or_default();
                    served
                        .lock()
                        .unwrap()
                        .push(name[4..].parse::<usize>().unwrap());
                    // Long enough for every trigger to queue behind the first sync.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, kube::Error>(Action::await_change())
                },
                |_, _: &kube::Error, _| Action::await_change(),
                context.clone(),
            )
            .for_each(|_| async {});
        let drive = async {
            for i in 0..JOBS {
                trigger
                    .unbounded_send(ObjectRef::new(&format!("job-{i:02}")).within("ns"))
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Until every Job was served.
            while context.1.lock().unwrap().len() < JOBS {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = run => {}
            _ = drive => {}
        }
        context.1.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn jobs_waiting_for_a_worker_are_served_in_the_order_they_were_triggered() {
        let served = served_order(false).await;
        assert_eq!(served, (0..JOBS).collect::<Vec<_>>());
    }

    /// What the workers are for: kube-runtime's limit serves the waiting Jobs out of order.
    #[tokio::test]
    async fn kube_runtime_limit_serves_waiting_jobs_out_of_order() {
        let served = served_order(true).await;
        let mut sorted = served.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..JOBS).collect::<Vec<_>>(), "each Job once");
        assert_ne!(served, sorted, "served in trigger order");
    }

    #[tokio::test]
    async fn a_sync_waiting_for_a_worker_ends_when_the_controller_stops() {
        let (workers, stop) = Workers::new(1);
        let held = workers.turn().await.expect("a free worker");
        let waiting = workers.turn();
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        stop.send(true).unwrap();
        assert!(waiting.await.is_none());
        drop(held);
        assert!(workers.turn().await.is_none(), "no turns once stopped");
    }
}
