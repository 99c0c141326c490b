//! `kura drill verify`: re-read a sample (or all) of a tenant's instances
//! and check every byte against the stored blake3.

use super::*;

pub(super) async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (mut admin, ep) = admin_of(&a.endpoint, &a.creds).await?;
    let channel = connect_channel(&a.endpoint, &a.creds, Some(&a.tenant), ClientRole::Reader)
        .await?
        .channel;
    let mut client = ArchiveClient::new(channel);
    // Every instance's (uid, blake3): paged from the index.
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page = admin
            .list_instances(ListInstancesRequest {
                tenant: a.tenant.clone(),
                after: after.clone(),
                limit: 1000,
            })
            .await
            .map_err(|s| anyhow::anyhow!("list instances from {ep}: {}", s.message()))?
            .into_inner();
        for i in page.instances {
            let hash: [u8; 32] = i.blake3.as_ref().try_into().unwrap_or([0; 32]);
            all.push((i.sop_instance_uid, hash, i.size));
        }
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    let seed = a.seed.unwrap_or_else(|| unix_ms() as u64);
    let chosen: Vec<_> = if a.all || a.sample >= all.len() {
        all.clone()
    } else {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        rand::seq::index::sample(&mut rng, all.len(), a.sample)
            .into_iter()
            .map(|i| all[i].clone())
            .collect()
    };
    let bar = crate::cmd::progress_bar(
        chosen.len() as u64,
        a.json,
        "verifying [{bar:30}] {pos}/{len} eta {eta}",
    );
    let mut bad = Vec::new();
    let mut bytes = 0u64;
    for (sop, want, size) in &chosen {
        match read_once(&mut client, &a.tenant, sop).await {
            Ok(got) if got == *want => bytes += size,
            Ok(_) => bad.push(json!({"sop_instance_uid": sop, "error": "blake3 mismatch"})),
            Err(e) => bad.push(
                json!({"sop_instance_uid": sop, "error": code_of(&e), "message": e.message()}),
            ),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = json!({
        "tenant": a.tenant,
        "instances": all.len(),
        "checked": chosen.len(),
        "seed": seed,
        "bytes_checked": bytes,
        "failed": bad,
    });
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} of {} instance(s) of tenant {} ({} bytes, seed {seed}): {} failed",
            chosen.len(),
            all.len(),
            a.tenant,
            bytes,
            bad.len()
        );
        for b in &bad {
            println!("  {b}");
        }
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
