#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;

use super::*;

fn spec(kind: &str, max_rate: Option<f64>) -> JobSpec {
    JobSpec {
        kind: kind.into(),
        index: Some("a".into()),
        params: json!({"n": 1}),
        unit: "items",
        max_rate,
    }
}

/// A job of `n` items at `rate` items/s, answering how many it did.
fn counting(n: u64) -> JobWork {
    Box::new(move |ctl: Arc<JobCtl>| {
        Box::pin(async move {
            ctl.set_total(n);
            for _ in 0..n {
                ctl.advance(1).await?;
            }
            Ok(json!({"items": n}))
        })
    })
}

async fn wait_state(jobs: &Jobs, id: u64, state: JobState) -> JobView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let job = jobs.get(id).unwrap();
        if job.record.state == state {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never {state:?}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn options(dir: &std::path::Path) -> JobsOptions {
    JobsOptions {
        persist_every: Duration::from_millis(50),
        ..JobsOptions::new(dir.join("jobs"))
    }
}

#[tokio::test]
async fn a_job_runs_to_its_result_and_its_record_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    // 500 items at 5,000/s: 0.1 s.
    let job = jobs
        .submit(spec("count", Some(5000.0)), counting(500))
        .await
        .unwrap();
    assert_eq!(job.record.id, 1);
    let done = wait_state(&jobs, 1, JobState::Succeeded).await;
    assert_eq!(done.record.result, Some(json!({"items": 500})));
    assert_eq!(done.record.progress.done, 500);
    assert_eq!(done.record.progress.total, Some(500));
    let rate = done.rate.expect("a rate");
    assert!(rate > 0.0 && rate <= 5000.0 * 1.05, "{rate} items/s");
    assert_eq!(done.eta_seconds, None);
    jobs.shutdown(Duration::from_secs(5)).await;

    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    let again = jobs.get(1).unwrap();
    assert_eq!(again.record, done.record);
    // Ids keep counting after a restart.
    let next = jobs.submit(spec("count", None), counting(1)).await.unwrap();
    assert_eq!(next.record.id, 2);
    jobs.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_running_job_is_cancelled_at_its_next_step_and_queued_ones_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    // 20 items/s: 1,000 items would take 50 s.
    let slow = jobs
        .submit(spec("count", Some(20.0)), counting(1000))
        .await
        .unwrap();
    let queued = jobs.submit(spec("count", None), counting(5)).await.unwrap();
    assert_eq!(queued.record.state, JobState::Queued, "one runs at once");
    let running = wait_state(&jobs, slow.record.id, JobState::Running).await;
    assert_eq!(running.record.progress.total, Some(1000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moving = jobs.get(slow.record.id).unwrap();
    assert!(moving.record.progress.done >= 2, "{moving:?}");
    assert!(moving.eta_seconds.is_some_and(|s| s > 10.0), "{moving:?}");

    let cancelled = jobs
        .cancel(queued.record.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(cancelled.record.state, JobState::Cancelled);
    assert_eq!(cancelled.record.started_ms, None);
    let cancelled = jobs
        .cancel(slow.record.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(cancelled.record.state, JobState::Cancelled);
    assert!(cancelled.record.cancel_requested);
    assert!(cancelled.record.progress.done < 1000);
    assert!(matches!(
        jobs.cancel(slow.record.id, Duration::from_secs(1)).await,
        Err(JobsError::Finished(_))
    ));
    assert!(matches!(
        jobs.cancel(99, Duration::from_secs(1)).await,
        Err(JobsError::NotFound(99))
    ));
    jobs.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_queue_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(JobsOptions {
        max_queued: 2,
        ..options(dir.path())
    })
    .await
    .unwrap();
    jobs.submit(spec("count", Some(1.0)), counting(100))
        .await
        .unwrap();
    wait_state(&jobs, 1, JobState::Running).await;
    for _ in 0..2 {
        jobs.submit(spec("count", None), counting(1)).await.unwrap();
    }
    assert!(matches!(
        jobs.submit(spec("count", None), counting(1)).await,
        Err(JobsError::QueueFull(2))
    ));
    assert_eq!(jobs.list().len(), 3, "a refused job is not recorded");
    jobs.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_stop_leaves_running_and_queued_jobs_interrupted_with_their_progress() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    jobs.submit(spec("count", Some(50.0)), counting(10_000))
        .await
        .unwrap();
    jobs.submit(spec("count", None), counting(1)).await.unwrap();
    wait_state(&jobs, 1, JobState::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    jobs.shutdown(Duration::from_secs(5)).await;
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    for id in [1, 2] {
        let r = jobs.get(id).unwrap().record;
        assert_eq!(r.state, JobState::Interrupted, "{r:?}");
        assert!(r.error.is_some());
    }
    assert!(jobs.get(1).unwrap().record.progress.done > 0);
    jobs.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn records_left_running_by_a_crash_are_shown_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    jobs.submit(spec("count", Some(10.0)), counting(10_000))
        .await
        .unwrap();
    wait_state(&jobs, 1, JobState::Running).await;
    // No shutdown: the records stay as a crash leaves them. Progress is
    // written as it goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let on_disk: JobRecord = serde_json::from_slice(
            &std::fs::read(dir.path().join("jobs").join("000000000001.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(on_disk.state, JobState::Running);
        if on_disk.progress.done > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What a crash leaves: a copy of the directory as it is now.
    let crashed = dir.path().join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    for e in std::fs::read_dir(dir.path().join("jobs")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "json") {
            std::fs::copy(&path, crashed.join(path.file_name().unwrap())).unwrap();
        }
    }
    let opened = store::Store::open(&crashed, fpnode_segments::Fs::default()).unwrap();
    let (records, interrupted) = (opened.records, opened.interrupted);
    assert_eq!(records[0].state, JobState::Interrupted);
    assert_eq!(interrupted, [1]);
    assert!(records[0].progress.done > 0);
    jobs.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_stop_waits_for_a_job_that_ends_in_time_and_records_its_real_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    // A job that ignores the cancel and ends after 200 ms.
    let stubborn: JobWork = Box::new(|_ctl| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(json!("done"))
        })
    });
    jobs.submit(spec("late", None), stubborn).await.unwrap();
    wait_state(&jobs, 1, JobState::Running).await;
    jobs.shutdown(Duration::from_secs(5)).await;
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    assert_eq!(jobs.get(1).unwrap().record.state, JobState::Succeeded);
    jobs.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_tiny_rate_waits_until_cancelled_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    jobs.submit(spec("count", Some(1e-300)), counting(3))
        .await
        .unwrap();
    wait_state(&jobs, 1, JobState::Running).await;
    let cancelled = jobs.cancel(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(cancelled.record.state, JobState::Cancelled);
    jobs.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_job_that_panics_is_recorded_failed_and_the_next_one_runs() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(options(dir.path())).await.unwrap();
    let panics: JobWork = Box::new(|_ctl| Box::pin(async { panic!("job bug") }));
    jobs.submit(spec("bad", None), panics).await.unwrap();
    let after = jobs.submit(spec("count", None), counting(3)).await.unwrap();
    let failed = wait_state(&jobs, 1, JobState::Failed).await;
    assert!(
        failed
            .record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("job bug")),
        "{failed:?}"
    );
    wait_state(&jobs, after.record.id, JobState::Succeeded).await;
    jobs.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn old_finished_records_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::start(JobsOptions {
        keep_finished: 3,
        ..options(dir.path())
    })
    .await
    .unwrap();
    for _ in 0..6 {
        let j = jobs.submit(spec("count", None), counting(1)).await.unwrap();
        wait_state(&jobs, j.record.id, JobState::Succeeded).await;
    }
    let ids: Vec<u64> = jobs.list().iter().map(|j| j.record.id).collect();
    assert_eq!(ids, [6, 5, 4]);
    let files = std::fs::read_dir(dir.path().join("jobs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(files, 3);
    jobs.shutdown(Duration::from_secs(5)).await;
}
