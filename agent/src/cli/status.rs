use std::process::ExitCode;

/// Exits 0 once the policy is enforced on every present endpoint
/// interface, 1 otherwise.
pub fn run(ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    let v = ctx.call("GET", "/v1/status", &[], None)?;
    ctx.print(&v, |v| {
        let p = &v["policy"];
        println!(
            "policy     {} (generation {}, applied at unix time {})",
            p["hash"].as_str().unwrap_or(""),
            p["generation"],
            p["applied_at"]
        );
        println!("file       {}", p["file"].as_str().unwrap_or(""));
        println!(
            "node       {}   hook {}   layout v{}",
            v["node"].as_str().unwrap_or(""),
            v["hook"].as_str().unwrap_or(""),
            v["layout"]
        );
        println!("endpoints");
        for e in v["endpoints"].as_array().into_iter().flatten() {
            println!(
                "  {:<20} {:<16} {}",
                e["name"].as_str().unwrap_or(""),
                e["interface"].as_str().unwrap_or("-"),
                e["state"].as_str().unwrap_or("")
            );
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
        match v["last_error"].as_str() {
            Some(e) => println!("last error {e}"),
            None => println!("last error none"),
        }
    });
    Ok(if v["enforced"] == serde_json::Value::Bool(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
