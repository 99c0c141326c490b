//! Delete: an admin of the tenant deletes an instance or a study; the
//! manifest goes first, the shards follow through orphan reclaim; retention
//! and legal hold refuse it, changing nothing; every delete is audited.

use std::time::Duration;

use kura_auth::ClientRole;
use kura_dicom::synthetic::{Synthetic, instance as synthetic, uid};
use kura_proto::meta::{Applied, Command, LegalHold};
use kura_proto::meta_client::Retry;
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{DeleteRequest, DeleteStudyRequest};

use crate::harness::{Cluster, TENANT, eventually, retrieve, stat, store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_needs_an_admin_respects_retention_and_hold_and_reclaims_the_shards() {
    let dir = tempfile::tempdir().expect("dir");
    let c = Cluster::start_with(dir, |cfg| {
        cfg.orphan_grace = Duration::from_secs(2);
        cfg.gc_interval = Duration::from_millis(300);
    })
    .await;
    let mut client = c.client().await;
    let study = uid("90", 1);
    let mut sops = Vec::new();
    for i in 0..3 {
        let s = Synthetic {
            study: study.clone(),
            series: uid("91", 1),
            sop: uid("92", i),
        };
        store(&mut client, TENANT, &synthetic(&s, 64 * 1024, i))
            .await
            .expect("store");
        sops.push(s.sop);
    }
    assert_eq!(c.shard_count(), 27);
    let delete = |sop: &str| DeleteRequest {
        tenant: TENANT.into(),
        sop_instance_uid: sop.into(),
    };

    // A reader and writer may not delete.
    let mut rw = ArchiveClient::new(
        c.channel_as(TENANT, &[ClientRole::Reader, ClientRole::Writer])
            .await,
    );
    let e = rw.delete(delete(&sops[0])).await.expect_err("not an admin");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    let mut admin = ArchiveClient::new(c.channel_as(TENANT, &[ClientRole::Admin]).await);
    let meta = c.meta();
    let propose = |cmd: Command| {
        let meta = meta.clone();
        async move {
            meta.propose(&cmd, Retry::Idempotent)
                .await
                .expect("propose")
                .expect("applied")
        }
    };
    // Within the tenant's retention: FAILED_PRECONDITION naming the date.
    assert_eq!(
        propose(Command::SetRetention {
            tenant: TENANT.into(),
            days: Some(3650),
        })
        .await,
        Applied::PolicySet
    );
    let e = admin.delete(delete(&sops[0])).await.expect_err("retained");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("retention period until 20"), "{e}");
    let info = stat(&mut client, TENANT, &sops[0])
        .await
        .expect("still there");
    assert_eq!(
        info.retained_until_unix_ms,
        info.stored_at_unix_ms + 3650 * 86_400_000,
        "Stat shows the retention"
    );
    assert!(info.legal_hold.is_empty());
    propose(Command::SetRetention {
        tenant: TENANT.into(),
        days: None,
    })
    .await;

    // Deleted: NOT_FOUND from then on, a second delete too.
    let r = admin
        .delete(delete(&sops[0]))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(r.deleted, 1);
    for e in [
        stat(&mut client, TENANT, &sops[0])
            .await
            .expect_err("deleted"),
        retrieve(&mut client, TENANT, &sops[0])
            .await
            .expect_err("deleted"),
    ] {
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    }
    let e = admin.delete(delete(&sops[0])).await.expect_err("gone");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // A study on legal hold is refused whole.
    propose(Command::SetLegalHold {
        tenant: TENANT.into(),
        study_instance_uid: study.clone(),
        hold: Some(LegalHold {
            reason: "case 2026-41".into(),
            since_unix_ms: 0,
            by: "test".into(),
        }),
    })
    .await;
    let study_req = DeleteStudyRequest {
        tenant: TENANT.into(),
        study_instance_uid: study.clone(),
    };
    let e = admin
        .delete_study(study_req.clone())
        .await
        .expect_err("held");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("case 2026-41"), "{e}");
    let info = stat(&mut client, TENANT, &sops[1]).await.expect("kept");
    assert_eq!(info.legal_hold, "case 2026-41", "Stat shows the hold");
    assert_eq!(info.retained_until_unix_ms, 0);
    propose(Command::SetLegalHold {
        tenant: TENANT.into(),
        study_instance_uid: study.clone(),
        hold: None,
    })
    .await;
    let r = admin
        .delete_study(study_req.clone())
        .await
        .expect("delete study")
        .into_inner();
    assert_eq!(r.deleted, 2);
    let e = admin.delete_study(study_req).await.expect_err("empty now");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // The shards follow, through orphan reclaim.
    eventually("every shard reclaimed", Duration::from_secs(30), || {
        c.shard_count() == 0
    })
    .await;

    // Every delete is in the audit trail, the refused ones too.
    let mut audit = kura_proto::v1::audit_client::AuditClient::new(
        c.channel_as(TENANT, &[ClientRole::Auditor]).await,
    );
    let mut st = audit
        .query(kura_proto::v1::AuditQueryRequest::default())
        .await
        .expect("audit")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(e) = st.message().await.expect("entry") {
        if e.action.starts_with("Delete") {
            seen.push((
                e.action,
                e.outcome,
                e.sop_instance_uid,
                e.study_instance_uid,
            ));
        }
    }
    for want in [
        ("Delete", "PERMISSION_DENIED"),
        ("Delete", "FAILED_PRECONDITION"),
        ("Delete", "OK"),
        ("Delete", "NOT_FOUND"),
        ("DeleteStudy", "FAILED_PRECONDITION"),
        ("DeleteStudy", "OK"),
    ] {
        assert!(
            seen.iter()
                .any(|(a, o, _, _)| (a.as_str(), o.as_str()) == want),
            "no {want:?} entry in {seen:#?}"
        );
    }
    let ok = seen
        .iter()
        .find(|(a, o, _, _)| a == "Delete" && o == "OK")
        .expect("the delete");
    assert_eq!((&ok.2, &ok.3), (&sops[0], &study));
    c.dev.shutdown().await;
}
