//! The sync workers: `--concurrency` Jobs sync at once, and the Jobs waiting for a worker
//! are served oldest work first.
//!
//! kube-runtime's own concurrency limit parks the Jobs that wait for a worker in a hash set
//! and, when a worker frees up, takes the first Job the set's iteration yields. Under
//! saturation a Job placed late in that order waits while Jobs placed early are served again
//! and again: in the half-size bench at 20/30 the first Jobs' pods finished at 2 s and were
//! counted after 100 s and more, while the median Job was served 2 s after its pod
//! finished. So the controller lets kube-runtime start every triggered sync at once, and
//! each waits here for its turn. A Job triggered again while it waits is still one waiter
//! (kube-runtime never runs two syncs of one Job), and its sync reads the caches only once
//! it has a worker.
//!
//! The order is by how long the work has been owed, not by arrival here: a Job's key is
//! its first trigger not yet served. A Job triggered while its previous sync ran reaches
//! the workers only when that sync ends (kube-runtime holds the trigger back meanwhile),
//! and keeps the place of its trigger among the Jobs triggered after it.
//!
//! Work that counts finished pods goes before other work ([`Lane`]): under a saturated
//! client limit, a round of every Job's syncs takes a minute and more, and a pod that
//! finished early in it would otherwise wait for the whole round to be counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{oneshot, watch};

/// What a waiting sync owes, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// A pod of the Job finished and waits to be counted.
    Count,
    /// Anything else: a new or changed Job, pods to create, a requeue.
    Other,
}

/// A waiting sync's place: its lane, then how long its work has been owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owed {
    pub lane: Lane,
    pub since: Instant,
}

impl Owed {
    pub fn other(since: Instant) -> Self {
        Owed {
            lane: Lane::Other,
            since,
        }
    }
}

/// The workers' turns, handed out most urgent key first (equal keys in the order asked).
#[derive(Clone)]
pub struct Workers {
    shared: Arc<Shared>,
    stopping: watch::Receiver<bool>,
}

struct Shared {
    state: Mutex<State>,
}

struct State {
    free: usize,
    /// By (key, order asked): whose sync waits, where to send the turn.
    waiting: BTreeMap<(Owed, u64), (ObjectRef<Job>, oneshot::Sender<Turn>)>,
    /// Each waiting Job's place in `waiting` (the latest, if a Job asked twice).
    places: HashMap<ObjectRef<Job>, (Owed, u64)>,
    asked: u64,
}

impl State {
    fn pop_first(&mut self) -> Option<oneshot::Sender<Turn>> {
        let (place, (job, waiter)) = self.waiting.pop_first()?;
        if self.places.get(&job) == Some(&place) {
            self.places.remove(&job);
        }
        Some(waiter)
    }
}

/// A worker, held until dropped; then the oldest waiter gets it.
pub struct Turn {
    /// None once handed on (a waiter that gave up sends it back this way).
    shared: Option<Arc<Shared>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            Shared::hand_on(&shared);
        }
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("workers lock")
    }

    /// A worker came free: to the oldest waiter still waiting, else back to the pool.
    fn hand_on(shared: &Arc<Shared>) {
        loop {
            let next = {
                let mut state = shared.state();
                let next = state.pop_first();
                if next.is_none() {
                    state.free += 1;
                }
                next
            };
            let Some(waiter) = next else {
                return;
            };
            let turn = Turn {
                shared: Some(shared.clone()),
            };
            match waiter.send(turn) {
                Ok(()) => return,
                // It stopped waiting: the next one. (Not dropped as a turn: no recursion.)
                Err(mut turn) => {
                    turn.shared = None;
                }
            }
        }
    }
}

impl Workers {
    /// `count` workers, and the sender that stops handing out turns (send `true`, or drop
    /// it) so that the syncs still waiting end at once instead of running one by one while
    /// the controller shuts down.
    pub fn new(count: u16) -> (Workers, watch::Sender<bool>) {
        let (stop, stopping) = watch::channel(false);
        let state = State {
            free: usize::from(count.max(1)),
            waiting: BTreeMap::new(),
            places: HashMap::new(),
            asked: 0,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        (Workers { shared, stopping }, stop)
    }

    /// The key of the most urgent sync still waiting for a worker, if any.
    pub fn first_waiting(&self) -> Option<Owed> {
        let state = self.shared.state();
        state
            .waiting
            .iter()
            .find(|(_, (_, waiter))| !waiter.is_closed())
            .map(|((key, _), _)| *key)
    }

    /// Moves `job`'s sync, if it waits for a worker, to `key` when that is more urgent
    /// than its place: a pod that finished while the sync waited in the other lane.
    pub fn promote(&self, job: &ObjectRef<Job>, key: Owed) {
        let mut state = self.shared.state();
        let Some(&(place, order)) = state.places.get(job) else {
            return;
        };
        if key >= place {
            return;
        }
        if let Some(waiter) = state.waiting.remove(&(place, order)) {
            state.waiting.insert((key, order), waiter);
            state.places.insert(job.clone(), (key, order));
        }
    }

    /// A worker for `job`'s work, at the place `key` says; None once the controller stops.
    /// If the waiting future is dropped, a turn sent to it meanwhile goes on to the next
    /// waiter.
    pub async fn turn(&self, job: &ObjectRef<Job>, key: Owed) -> Option<Turn> {
        let waiting = {
            let mut state = self.shared.state();
            if *self.stopping.borrow() {
                return None;
            }
            if state.free > 0 {
                state.free -= 1;
                return Some(Turn {
                    shared: Some(self.shared.clone()),
                });
            }
            let (tx, rx) = oneshot::channel();
            state.asked += 1;
            let order = state.asked;
            state.waiting.insert((key, order), (job.clone(), tx));
            state.places.insert(job.clone(), (key, order));
            rx
        };
        let mut stopping = self.stopping.clone();
        tokio::select! {
            biased;
            // Err: the sender is gone with the controller that owned it.
            _ = stopping.wait_for(|stop| *stop) => None,
            turn = waiting => turn.ok(),
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

    fn job(i: usize) -> ObjectRef<Job> {
        ObjectRef::new(&format!("job-{i}")).within("ns")
    }

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
                    let _turn = if *limit {
                        None
                    } else {
                        let key = ObjectRef::from_obj(&*job);
                        workers.turn(&key, Owed::other(Instant::now())).await
                    };
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
        let held = workers
            .turn(&job(0), Owed::other(Instant::now()))
            .await
            .expect("a free worker");
        let second = job(1);
        let waiting = workers.turn(&second, Owed::other(Instant::now()));
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        stop.send(true).unwrap();
        assert!(waiting.await.is_none());
        drop(held);
        let again = workers.turn(&job(2), Owed::other(Instant::now())).await;
        assert!(again.is_none(), "no turns once stopped");
    }

    /// Waiters for jobs 0, 1, … asking at `keys` (in this order, relative to a base
    /// instant) behind one held worker; `meanwhile` acts once all of them wait, then the
    /// worker is released. The order they got it in, as indexes into `keys`.
    async fn served_with(
        keys: &[(Lane, Duration)],
        give_up: Option<usize>,
        meanwhile: impl FnOnce(&Workers, Instant),
    ) -> Vec<usize> {
        let (workers, _stop) = Workers::new(1);
        let base = Instant::now();
        let held = workers
            .turn(&job(100), Owed::other(base))
            .await
            .expect("a free worker");
        let served = Mutex::new(Vec::new());
        let mut waiters: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, (lane, after))| {
                let (workers, served) = (&workers, &served);
                let key = Owed {
                    lane: *lane,
                    since: base + *after,
                };
                Box::pin(async move {
                    let turn = workers.turn(&job(i), key).await;
                    served.lock().unwrap().push(i);
                    drop(turn);
                })
            })
            .collect();
        for waiter in &mut waiters {
            assert!(futures::poll!(waiter.as_mut()).is_pending());
        }
        if let Some(quitter) = give_up {
            drop(waiters.remove(quitter));
        }
        meanwhile(&workers, base);
        drop(held);
        futures::future::join_all(waiters).await;
        served.into_inner().unwrap()
    }

    /// [`served_with`] in the other lane, nothing done meanwhile.
    async fn served(keys: &[Duration], give_up: Option<usize>) -> Vec<usize> {
        let keys: Vec<_> = keys.iter().map(|k| (Lane::Other, *k)).collect();
        served_with(&keys, give_up, |_, _| {}).await
    }

    #[tokio::test]
    async fn the_oldest_work_gets_the_next_worker_whenever_it_asked() {
        let ms = Duration::from_millis;
        assert_eq!(
            served(&[ms(3), ms(1), ms(2), ms(1)], None).await,
            [1, 3, 2, 0]
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_passes_its_turn_on() {
        let ms = Duration::from_millis;
        // The oldest (index 1) is dropped before its turn comes.
        assert_eq!(served(&[ms(3), ms(1), ms(2)], Some(1)).await, [2, 0]);
    }

    #[tokio::test]
    async fn the_oldest_waiting_key_is_known_and_a_waiter_that_gave_up_is_not_counted() {
        let ms = Duration::from_millis;
        let (workers, _stop) = Workers::new(1);
        let base = Instant::now();
        assert_eq!(workers.first_waiting(), None, "nobody waits");
        let held = workers
            .turn(&job(100), Owed::other(base))
            .await
            .expect("a free worker");
        assert_eq!(workers.first_waiting(), None, "the worker was free");
        let (a, b) = (job(1), job(2));
        let mut older = Box::pin(workers.turn(&a, Owed::other(base + ms(1))));
        let mut younger = Box::pin(workers.turn(&b, Owed::other(base + ms(2))));
        assert!(futures::poll!(older.as_mut()).is_pending());
        assert!(futures::poll!(younger.as_mut()).is_pending());
        assert_eq!(workers.first_waiting(), Some(Owed::other(base + ms(1))));
        drop(older);
        assert_eq!(workers.first_waiting(), Some(Owed::other(base + ms(2))));
        drop(held);
        assert!(younger.await.is_some());
        assert_eq!(workers.first_waiting(), None);
    }

    #[tokio::test]
    async fn counting_goes_before_older_work_of_other_kinds() {
        let ms = Duration::from_millis;
        let keys = [
            (Lane::Other, ms(1)),
            (Lane::Count, ms(3)),
            (Lane::Count, ms(2)),
        ];
        let served = served_with(&keys, None, |workers, base| {
            let first = workers.first_waiting().expect("waiters");
            assert_eq!((first.lane, first.since), (Lane::Count, base + ms(2)));
        });
        assert_eq!(served.await, [2, 1, 0]);
    }

    #[tokio::test]
    async fn a_waiting_sync_whose_pod_finished_moves_to_the_count_lane() {
        let ms = Duration::from_millis;
        let keys = [(Lane::Other, ms(1)), (Lane::Other, ms(2))];
        let served = served_with(&keys, None, |workers, base| {
            let counting = Owed {
                lane: Lane::Count,
                since: base + ms(5),
            };
            workers.promote(&job(1), counting);
            // A key no more urgent than the place held, or a Job not waiting: no change.
            workers.promote(&job(0), Owed::other(base + ms(9)));
            workers.promote(&job(7), counting);
            assert_eq!(workers.first_waiting(), Some(counting));
        });
        assert_eq!(served.await, [1, 0]);
    }
}
