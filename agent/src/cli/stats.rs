use std::process::ExitCode;

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

pub fn run(ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    let v = ctx.call("GET", "/v1/stats", &[], None)?;
    ctx.print(&v, |v| {
        println!(
            "{:<6} {:<60} {:>12} {:>14}",
            "RULE", "GROUP/DIRECTION: RULE", "PACKETS", "BYTES"
        );
        for r in v["rules"].as_array().into_iter().flatten() {
            let name = format!(
                "{}/{}: {}",
                r["group"].as_str().unwrap_or(""),
                r["direction"].as_str().unwrap_or(""),
                r["rule"].as_str().unwrap_or("")
            );
            let never = if r["never_matched"] == serde_json::Value::Bool(true) {
                "  never matched"
            } else {
                ""
            };
            println!(
                "{:<6} {:<60} {:>12} {:>14}{never}",
                n(&r["id"]),
                name,
                n(&r["packets"]),
                n(&r["bytes"])
            );
        }
        println!("\n{:<32} {:>12} {:>14}", "DROPPED", "PACKETS", "BYTES");
        for r in v["drops"].as_array().into_iter().flatten() {
            println!(
                "{:<32} {:>12} {:>14}",
                r["reason"].as_str().unwrap_or(""),
                n(&r["packets"]),
                n(&r["bytes"])
            );
        }
        println!("\n{:<32} {:>12} {:>14}", "PASSED", "PACKETS", "BYTES");
        for r in v["passes"].as_array().into_iter().flatten() {
            println!(
                "{:<32} {:>12} {:>14}",
                r["reason"].as_str().unwrap_or(""),
                n(&r["packets"]),
                n(&r["bytes"])
            );
        }
        let (ct, inbound) = (&v["conntrack"], &v["inbound"]);
        println!(
            "\nconntrack: flows endpoints opened {} of {} entries, {} inserted; flows opened towards them {} of {}, {} inserted",
            ct["entries"], ct["capacity"], ct["inserted"], inbound["entries"], inbound["capacity"], inbound["inserted"]
        );
    });
    Ok(ExitCode::SUCCESS)
}
