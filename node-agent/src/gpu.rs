//! GPU measurements from `nvidia-smi`. A host without a GPU (or without the tool) reports
//! `present: false`; that is information, not a failure.

use std::time::Duration;

use skylaunch_protocol::GpuReport;

const QUERY: &str = "--query-gpu=name,utilization.gpu,memory.used,memory.total,temperature.gpu";

pub async fn query(nvidia_smi: &str, timeout: Duration) -> GpuReport {
    let run = tokio::process::Command::new(nvidia_smi)
        .args([QUERY, "--format=csv,noheader,nounits"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(out)) if out.status.success() => {
            parse(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(GpuReport::absent)
        }
        _ => GpuReport::absent(),
    }
}

/// One CSV line per GPU: name, utilisation %, memory used MiB, memory total MiB, temperature °C.
pub fn parse(csv: &str) -> Option<GpuReport> {
    let mut names = Vec::new();
    let (mut util, mut used, mut total, mut temp) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for line in csv.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 5 || fields[0].is_empty() {
            return None;
        }
        names.push(fields[0].to_string());
        util.extend(reading(fields[1])?);
        used.extend(reading(fields[2])?);
        total.extend(reading(fields[3])?);
        temp.extend(reading(fields[4])?);
    }
    if names.is_empty() {
        return None;
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let sum = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>());
    Some(GpuReport {
        present: true,
        count: Some(names.len() as u32),
        name: names.into_iter().next(),
        utilization_pct: mean(&util),
        memory_used_mib: sum(&used),
        memory_total_mib: sum(&total),
        temperature_c: temp.iter().copied().reduce(f64::max),
    })
}

/// One numeric field: `Some(None)` for a value the GPU does not report (`[N/A]`,
/// `[Not Supported]`), `None` when the field is not a reading at all, so that output that only
/// happens to have five comma-separated fields is not mistaken for a GPU.
fn reading(field: &str) -> Option<Option<f64>> {
    if field.starts_with('[') && field.ends_with(']') || field == "N/A" {
        return Some(None);
    }
    field
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gpu_is_reported_with_its_short_type() {
        let g = parse("NVIDIA L4, 37, 20000, 23034, 61\n").unwrap();
        assert_eq!(g.name.as_deref(), Some("NVIDIA L4"));
        assert_eq!(g.short_type().as_deref(), Some("L4"));
        assert_eq!(g.count, Some(1));
        assert_eq!(g.utilization_pct, Some(37.0));
        assert_eq!(g.memory_total_mib, Some(23034.0));
        assert_eq!(g.temperature_c, Some(61.0));
    }

    #[test]
    fn eight_gpus_are_aggregated() {
        let csv: String = (0..8)
            .map(|i| {
                format!(
                    "NVIDIA H100 80GB HBM3, {}, 1000, 81559, {}\n",
                    i * 10,
                    50 + i
                )
            })
            .collect();
        let g = parse(&csv).unwrap();
        assert_eq!(g.count, Some(8));
        assert_eq!(g.short_type().as_deref(), Some("H100"));
        assert_eq!(g.utilization_pct, Some(35.0));
        assert_eq!(g.memory_used_mib, Some(8000.0));
        assert_eq!(g.temperature_c, Some(57.0), "the hottest GPU");
    }

    #[test]
    fn unavailable_readings_are_null_not_failures() {
        let g = parse("Tesla T4, [N/A], [N/A], 15360, 40\n").unwrap();
        assert_eq!(g.short_type().as_deref(), Some("T4"));
        assert_eq!(g.utilization_pct, None);
        assert_eq!(g.memory_used_mib, None);
        assert_eq!(g.memory_total_mib, Some(15360.0));
        let g = parse("NVIDIA A10G, [Not Supported], 100, 23028, 45\n").unwrap();
        assert_eq!(g.utilization_pct, None);
        assert_eq!(g.temperature_c, Some(45.0));
    }

    #[test]
    fn garbage_output_means_no_gpu() {
        assert_eq!(parse(""), None);
        assert_eq!(
            parse("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
            None
        );
        assert_eq!(parse("a, b, c, d, e\n"), None, "five fields are not enough");
        assert_eq!(parse("NVIDIA L4, 37, 20000\n"), None, "a short line");
    }

    #[tokio::test]
    async fn missing_nvidia_smi_reports_absent_gpu() {
        let g = query("/nonexistent/nvidia-smi", Duration::from_secs(1)).await;
        assert!(!g.present);
    }

    #[tokio::test]
    async fn failing_nvidia_smi_reports_absent_gpu() {
        // `false` stands in for nvidia-smi on a VM whose driver is not loaded (exit status 9).
        let g = query("false", Duration::from_secs(1)).await;
        assert_eq!(g, GpuReport::absent());
    }
}
