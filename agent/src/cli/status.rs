use std::process::ExitCode;

/// Exits 0 once the policy is enforced on every present endpoint
/// interface, 1 otherwise. An endpoint without a MAC counts as enforced
/// (all its frames are dropped); its problem is printed under it.
pub fn run(ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    let v = ctx.call("GET", "/v1/status", &[], None)?;
    ctx.print(&v, |v| {
        let p = &v["policy"];
        println!(
            "agent      {} (pid {}), up {} s since {}",
            v["version"].as_str().unwrap_or(""),
            v["pid"],
            v["uptime_seconds"],
            v["started_at"].as_str().unwrap_or("")
        );
        println!(
            "policy     {} (generation {}, applied at {})",
            p["hash"].as_str().unwrap_or(""),
            p["generation"],
            p["applied_at_rfc3339"].as_str().unwrap_or("")
        );
        println!(
            "file       {}{}",
            p["file"].as_str().unwrap_or(""),
            if p["matches_file"] == serde_json::Value::Bool(false) {
                " (the enforced policy differs: changed through the API, kept in the agent's state)"
            } else {
                ""
            }
        );
        println!(
            "node       {}   hook {}   layout v{}",
            v["node"].as_str().unwrap_or(""),
            v["hook"].as_str().unwrap_or(""),
            v["layout"]
        );
        println!("endpoints");
        for e in v["endpoints"].as_array().into_iter().flatten() {
            let problem = e["problem"].as_str();
            let state = match (e["state"].as_str().unwrap_or(""), problem) {
                // Enforced, but the endpoint has no MAC: it has no network.
                ("enforced", Some(_)) => "enforced, but no MAC".to_string(),
                (state, _) => state.to_string(),
            };
            println!(
                "  {:<20} {:<16} {:<22} {}",
                e["name"].as_str().unwrap_or(""),
                e["interface"].as_str().unwrap_or("-"),
                state,
                e["mac"].as_str().unwrap_or("-")
            );
            if let Some(problem) = problem {
                println!("  {:<20} {problem}", "");
            }
        }
        for q in v["quarantined"].as_array().into_iter().flatten() {
            println!("  quarantined          {}", q["interface"].as_str().unwrap_or(""));
        }
        println!("maps");
        for m in v["maps"].as_array().into_iter().flatten() {
            println!(
                "  {:<16} {:>8} / {:<8}",
                m["map"].as_str().unwrap_or(""),
                m["entries"],
                m["capacity"]
            );
        }
        if let (Some(bytes), Some(max)) = (v["map_memory"]["bytes"].as_u64(), v["map_memory"]["max"].as_u64()) {
            println!(
                "  kernel memory    {} of {} (--max-map-memory)",
                hostwall::datapath::memory::human(bytes),
                hostwall::datapath::memory::human(max)
            );
        }
        match v["last_error"].as_str() {
            Some(e) => println!("last error {} {e}", v["last_error_at"].as_str().unwrap_or("")),
            None => println!("last error none"),
        }
    });
    Ok(if v["enforced"] == serde_json::Value::Bool(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::UNAVAILABLE)
    })
}
