// Formatting of numbers, times and a job's pace (rate and ETA), computed from its counts and timestamps.

const numberFormat = new Intl.NumberFormat("en");

/** Return ``n`` with thousands separators, or an em dash for null. */
export function num(n) {
  return n === null || n === undefined ? "—" : numberFormat.format(n);
}

/** Return a short human duration: "45 s", "3 min 12 s", "2 h 5 min". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** Return "just now", "5 min ago", "3 h ago", or a date for anything older than a week. */
export function relativeTime(iso, nowMs) {
  if (!iso) return "—";
  const then = Date.parse(iso);
  const ago = (nowMs - then) / 1000;
  if (ago < 10) return "just now";
  if (ago < 60) return `${Math.round(ago)} s ago`;
  if (ago < 3600) return `${Math.floor(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.floor(ago / 3600)} h ago`;
  if (ago < 7 * 86400) return `${Math.floor(ago / 86400)} d ago`;
  return new Date(then).toLocaleDateString();
}

/** Return the local date and time of ``iso`` for tooltips and details. */
export function absoluteTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

/**
 * Return {rate, eta} of a job: items per second since it started (until it finished), and seconds left
 * at that rate for an active job. Either is null when it cannot be known yet.
 */
export function jobPace(job, nowMs) {
  if (job.ingest) {
    // Ingest jobs carry their own pace: skipped (unchanged) documents do not count as work done.
    const active = !isTerminal(job.status);
    return { rate: job.ingest.documents_per_s || null, eta: active ? job.ingest.eta_s : null };
  }
  const processed = job.counts.done + job.counts.failed;
  if (!job.started_at || processed === 0) return { rate: null, eta: null };
  const end = job.finished_at ? Date.parse(job.finished_at) : nowMs;
  const seconds = (end - Date.parse(job.started_at)) / 1000;
  if (seconds <= 0) return { rate: null, eta: null };
  const rate = processed / seconds;
  const active = job.status === "queued" || job.status === "running";
  return { rate, eta: active ? Math.max(0, job.counts.total - processed) / rate : null };
}

/** Return a rate as "86 /s" or "0.4 /s". */
export function rate(perSecond) {
  if (perSecond === null) return "—";
  return `${perSecond >= 10 ? num(Math.round(perSecond)) : perSecond.toFixed(1)} /s`;
}

/** Return true for the statuses after which a job never changes. */
export function isTerminal(status) {
  return status === "succeeded" || status === "failed" || status === "cancelled";
}
