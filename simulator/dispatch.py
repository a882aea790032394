"""One hour of dispatch: jobs arrive, candidates are offered in turn, providers accept or decline,
drive, arrive or get cancelled, and outcomes become labels later, some noisy, some corrected.

Everything is vectorised over the hour's jobs with (job, slot) matrices padded to the candidate
count. All draws have fixed shapes keyed by job and slot, so a scenario never moves a random
number outside its segment.

Ground truth, documented because every monitor is judged against it:

* ETA (minutes from acceptance to arrival) = (preparation + road distance / true speed) x
  log-normal noise, where preparation grows with the provider's queue and off-shift status and
  true speed is the pushed ``speed_kmh`` times the provider's speed factor (divided by
  ``1 + size`` under concept drift).
* Acceptance is logistic in distance, queue depth, shift status, line of business, service
  type, night hours and the provider's own bias; cohort drops and calibration shifts add to the
  logit.
* The arrival label is GPS-timed with N(0, 1.5 min) error, replaced in 4% of jobs by a
  dispatcher's manual override (rounded to 5 minutes, biased low), and 3% of arrivals receive a
  later correction to the true value. Arrival labels become known after a log-normal delay
  (median 20 minutes, sigma 1.0) x the label-delay factor; acceptance labels when the provider
  answers (0.5-3 minutes). Cancelled jobs never get an arrival label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from contracts.features import LINES_OF_BUSINESS, SERVICE_TYPES, VEHICLE_CLASSES
from contracts.warehouse import CANDIDATES, EVENTS, LABELS, REQUESTS, EventType, LabelSource, LabelType
from simulator.live_state import (
    US_PER_HOUR,
    US_PER_MIN,
    WEATHER,
    cell_traffic,
    hour_of_day,
    provider_status,
    region_load,
    weather_code,
)
from simulator.randomness import Stream, choice_index, normal, uniform
from simulator.scenarios import ActiveIncidents
from simulator.world import CELL_KM, KM_PER_DEG_LAT, KM_PER_DEG_LON, World

SERVICE_P = np.array([0.35, 0.2, 0.2, 0.12, 0.08, 0.05])
SERVICE_PREP_MIN = np.array([8.0, 2.0, 4.0, 2.0, 3.0, 12.0])
SERVICE_ACCEPT = np.array([-0.2, 0.3, 0.1, 0.2, 0.25, -0.5])
VEHICLE_P = np.array([0.5, 0.25, 0.08, 0.07, 0.03, 0.07])
LOB_ACCEPT = np.array([0.0, -0.15, -0.1, 0.35])
ROAD_FACTOR = 1.3
FIRST_NAMES = np.array(["Alex", "Maria", "John", "Wei", "Fatima", "Carlos", "Priya", "Olga", "Kwame", "Emma", "Liam", "Noor"])
LAST_NAMES = np.array(["Smith", "Garcia", "Chen", "Okafor", "Ivanova", "Patel", "Johnson", "Nguyen", "Kowalski", "Haddad"])
MEMBER_POOL = 5_000_000
#: Events per job on average (request, offers, answers, arrival or cancel, overrides); used to
#: turn an events/day rate into a jobs/day rate.
EVENTS_PER_JOB = 6.1


def lob_cumulative(hour: np.ndarray) -> np.ndarray:
    """Line-of-business mix by hour: fleets work business hours, auto clubs dominate otherwise."""
    business = ((hour >= 7) & (hour < 19)).astype(np.float64)
    p = np.stack([0.47 - 0.07 * business, 0.3 + 0.0 * business, 0.15 + 0.0 * business, 0.08 + 0.07 * business], axis=1)
    return np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)


@dataclass
class HourOutcome:
    """Arrow tables for the hour, plus the per-offer and per-assignment arrays batch features need."""

    requests: pa.Table
    candidates: pa.Table
    events: pa.Table
    labels: pa.Table
    #: Near-real-time pushes per group: entity keys, push times, true values and segment columns.
    #: The writer applies what is reported differently (unit changes) and what is lost (outages).
    features: dict[str, dict[str, object]]
    offers: dict[str, np.ndarray]
    assignments: dict[str, np.ndarray]


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _table(schema: pa.Schema, columns: dict[str, object]) -> pa.Table:
    arrays = []
    for f in schema:
        v = columns[f.name]
        if pa.types.is_timestamp(f.type):
            arrays.append(_ts(np.asarray(v)))
        else:
            arrays.append(pa.array(v, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _job_ids(day_tag: str, seq: np.ndarray) -> np.ndarray:
    return np.char.add(f"J{day_tag}-", np.char.zfill(seq.astype(str), 7)).astype(object)


def _candidates(world: World, cell: np.ndarray, region: np.ndarray, job: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_jobs, k) provider matrix (-1 = no candidate) drawn without replacement from the cell's pool.

    A stride co-prime with the pool size walks the shuffled pool without repeats; sparse cells
    fall back to their region's providers.
    """
    count = world.pool_count[cell]
    start = world.pool_start[cell]
    members = world.pool_members
    sparse = count < k
    count = np.where(sparse, world.region_pool_count[region], count)
    base = np.where(sparse, world.region_pool_start[region], start)
    offset0 = np.floor(uniform(world.seed, Stream.CAND_START, job) * count).astype(np.int64)
    step = 1 + np.floor(uniform(world.seed, Stream.CAND_STEP, job) * np.maximum(count - 1, 1)).astype(np.int64)
    step = np.where(np.gcd(step, np.maximum(count, 1)) == 1, step, 1)
    slots = np.arange(k)
    pos = (offset0[:, None] + slots[None, :] * step[:, None]) % np.maximum(count[:, None], 1)
    valid = slots[None, :] < np.minimum(count, k)[:, None]
    idx = base[:, None] + pos
    source = np.where(sparse[:, None], world.region_pool_members[np.minimum(idx, len(world.region_pool_members) - 1)], members[np.minimum(idx, len(members) - 1)])
    return np.where(valid, source, -1), valid


def simulate_hour(
    world: World,
    incidents: ActiveIncidents,
    hour_start_us: int,
    n_jobs: int,
    first_seq: int,
    day_tag: str,
    candidates_per_job: int,
    jobs_per_hour_region: np.ndarray,
) -> HourOutcome:
    seed, k = world.seed, candidates_per_job
    seq = first_seq + np.arange(n_jobs, dtype=np.int64)
    job = (hour_start_us // US_PER_HOUR) * 10_000_000 + seq  # globally unique key for draws
    ts = hour_start_us + np.floor(uniform(seed, Stream.JOB_MINUTE, job) * US_PER_HOUR).astype(np.int64)
    order = np.argsort(ts, kind="stable")
    job, seq, ts = job[order], seq[order], ts[order]
    hour = hour_of_day(ts)
    cell = choice_index(uniform(seed, Stream.DEMAND_CELL, job), world.demand_cdf).astype(np.int64)
    region = world.cell_region[cell]
    lat = world.cell_lat[cell] + (uniform(seed, Stream.JOB_OFFSET, job) - 0.5) * CELL_KM / KM_PER_DEG_LAT
    lon = world.cell_lon[cell] + (uniform(seed, Stream.JOB_OFFSET + 1, job) - 0.5) * CELL_KM / KM_PER_DEG_LON
    cum = lob_cumulative(hour)
    u_lob = uniform(seed, Stream.JOB_LOB, job)
    lob_idx = (u_lob[:, None] > cum).sum(axis=1).clip(0, len(LINES_OF_BUSINESS) - 1)
    lob = np.array(LINES_OF_BUSINESS, dtype=object)[lob_idx]
    service_idx = choice_index(uniform(seed, Stream.JOB_SERVICE, job), np.cumsum(SERVICE_P))
    service = np.array(SERVICE_TYPES, dtype=object)[service_idx]
    vehicle_idx = choice_index(uniform(seed, Stream.JOB_VEHICLE, job), np.cumsum(VEHICLE_P))
    vehicle = np.array(VEHICLE_CLASSES, dtype=object)[vehicle_idx]
    job_cols = {"region_id": region, "cell_id": cell, "line_of_business": lob, "service_type": service}
    new_lob_eta = np.ones(n_jobs)
    for inc, s, e in incidents.of_kind("new_line_of_business"):
        m = incidents.mask(inc, s, e, ts, job_cols) & (uniform(seed, Stream.NEW_LOB, job) < inc.size)
        lob = np.where(m, inc.value, lob)
        new_lob_eta = np.where(m, 1.25, new_lob_eta)
        lob_idx = np.where(m, -1, lob_idx)
    job_cols["line_of_business"] = lob

    member = (uniform(seed, Stream.JOB_MEMBER, job) * MEMBER_POOL).astype(np.int64)
    weather = np.array(WEATHER, dtype=object)[weather_code(world, region, ts)]

    provider, valid = _candidates(world, cell, region, job, k)
    n_cand = valid.sum(axis=1)
    push_lag = np.floor(uniform(seed, Stream.FEED_LAG, job) * 4 * US_PER_MIN).astype(np.int64)
    push_ts = ts - push_lag
    traffic = cell_traffic(world, cell, push_ts, incidents, job_cols)
    p_flat = np.where(valid, provider, 0).ravel()
    push_ts_c = np.repeat(push_ts, k)
    status = provider_status(world, p_flat, push_ts_c)
    dy = (status["provider_lat"] - np.repeat(lat, k)) * KM_PER_DEG_LAT
    dx = (status["provider_lon"] - np.repeat(lon, k)) * KM_PER_DEG_LON
    distance = np.sqrt(dx * dx + dy * dy).reshape(n_jobs, k)
    distance = np.where(valid, distance, np.inf)
    # Legacy dispatch offers nearest first: the slot order *is* the offer order.
    by_distance = np.argsort(distance, axis=1, kind="stable")
    rows = np.arange(n_jobs)[:, None]
    provider, valid, distance = provider[rows, by_distance], valid[rows, by_distance], distance[rows, by_distance]
    p_flat = np.where(valid, provider, 0).ravel()
    status = {name: v.reshape(n_jobs, k)[rows, by_distance] for name, v in status.items()}
    cohort = world.provider_cohort(p_flat).reshape(n_jobs, k)
    slot_key = job[:, None] * 16 + np.arange(k)[None, :]
    cand_cols = {
        "region_id": np.repeat(region, k).reshape(n_jobs, k),
        "cell_id": np.repeat(cell, k).reshape(n_jobs, k),
        "line_of_business": np.repeat(lob, k).reshape(n_jobs, k),
        "service_type": np.repeat(service, k).reshape(n_jobs, k),
        "provider_cohort": cohort,
    }
    flat_cols = {key: v.ravel() for key, v in cand_cols.items()}
    ts_c = np.repeat(ts, k)

    # Ground-truth ETA for every candidate (minutes from acceptance to arrival).
    concept = incidents.factor("concept_drift", ts_c, flat_cols, 1.0, transform=lambda s: 1.0 + s).reshape(n_jobs, k)
    speed = np.repeat(traffic["speed_kmh"], k).reshape(n_jobs, k) * world.provider_speed_factor[p_flat].reshape(n_jobs, k) / concept
    travel = ROAD_FACTOR * np.where(valid, distance, 0.0) / np.maximum(speed, 3.0) * 60.0
    prep = 8.0 + 16.0 * status["queue_depth"] + 12.0 * (1.0 - status["on_shift"]) + SERVICE_PREP_MIN[service_idx][:, None]
    eta = (prep + travel) * np.exp(0.18 * normal(seed, Stream.ETA_NOISE, slot_key)) * new_lob_eta[:, None]

    # Acceptance.
    night = ((hour < 6) | (hour >= 22))[:, None]
    logit = (
        1.0
        + world.provider_accept_bias[p_flat].reshape(n_jobs, k)
        - 0.07 * np.where(valid, distance, 0.0)
        - 0.55 * status["queue_depth"]
        - 2.2 * (1.0 - status["on_shift"])
        + np.where(lob_idx >= 0, LOB_ACCEPT[np.maximum(lob_idx, 0)], -0.4)[:, None]
        + SERVICE_ACCEPT[service_idx][:, None]
        - 0.4 * night
    )
    logit -= incidents.factor("cohort_acceptance_drop", ts_c, flat_cols, 0.0, combine="add").reshape(n_jobs, k)
    logit += incidents.factor("calibration_shift", ts_c, flat_cols, 0.0, combine="add").reshape(n_jobs, k)
    p_accept = 1.0 / (1.0 + np.exp(-logit))
    accepts = (uniform(seed, Stream.ACCEPT, slot_key) < p_accept) & valid

    # Offer sequence: nearest first, each answer takes 0.5-3 minutes.
    answer_min = 0.5 + 2.5 * uniform(seed, Stream.RESPONSE_DELAY, slot_key)
    offer_min = 0.5 + np.cumsum(answer_min, axis=1) - answer_min
    any_accept = accepts.any(axis=1)
    first = np.where(any_accept, np.argmax(accepts, axis=1), k)
    reassigned = any_accept & (uniform(seed, Stream.REASSIGN, job) < 0.05)
    later = accepts & (np.arange(k)[None, :] > first[:, None])
    second = np.where(later.any(axis=1), np.argmax(later, axis=1), k)
    final = np.where(reassigned, second, first)
    has_final = final < k
    last_offered = np.where(has_final, final, np.maximum(n_cand - 1, 0))
    offered = valid & (np.arange(k)[None, :] <= last_offered[:, None])
    fi = np.minimum(final, k - 1)
    assign_min = np.where(has_final, offer_min[np.arange(n_jobs), fi] + answer_min[np.arange(n_jobs), fi], np.nan)
    final_eta = np.where(has_final, eta[np.arange(n_jobs), fi], np.nan)
    final_provider = np.where(has_final, provider[np.arange(n_jobs), fi], -1)
    p_cancel = 0.03 + 0.25 / (1.0 + np.exp(-(np.nan_to_num(final_eta, nan=0.0) - 75.0) / 15.0))
    member_cancel = has_final & (uniform(seed, Stream.CANCEL, job) < p_cancel)
    arrived = has_final & ~member_cancel
    no_provider = ~has_final & (n_cand > 0)
    cancel_min = np.where(member_cancel, assign_min + uniform(seed, Stream.CANCEL + 1, job) * np.nan_to_num(final_eta), np.nan)
    cancel_min = np.where(no_provider | (n_cand == 0), offer_min[:, -1] + answer_min[:, -1] + 2.0, cancel_min)
    arrival_min = assign_min + final_eta

    def at(minutes: np.ndarray, jobs: np.ndarray | None = None) -> np.ndarray:
        """UTC microseconds ``minutes`` after the request of each job (all jobs, or ``jobs``)."""
        base = ts if jobs is None else ts[jobs]
        return base + np.round(np.nan_to_num(minutes) * US_PER_MIN).astype(np.int64)

    # Labels.
    gps = final_eta + 1.5 * normal(seed, Stream.GPS_NOISE, job)
    override = arrived & (uniform(seed, Stream.OVERRIDE, job) < 0.04)
    override_value = np.round(final_eta * (0.7 + 0.5 * uniform(seed, Stream.OVERRIDE + 1, job)) / 5.0) * 5.0
    reported = np.maximum(np.where(override, override_value, gps), 1.0)
    delay_factor = incidents.factor("label_delay", ts, job_cols, 1.0, transform=lambda s: 1.0 + s)
    label_delay = 20.0 * np.exp(1.0 * normal(seed, Stream.LABEL_DELAY, job)) * delay_factor
    arrival_known = at(arrival_min + label_delay)
    corrected = arrived & (uniform(seed, Stream.CORRECTION, job) < 0.03)
    correction_known = arrival_known + np.round((6 + 66 * uniform(seed, Stream.CORRECTION_DELAY, job)) * US_PER_HOUR).astype(np.int64)

    day_ids = _job_ids(day_tag, seq)
    off_j, off_s = np.nonzero(offered)
    acc_labels = {
        "job_id": day_ids[off_j],
        "provider_id": provider[off_j, off_s],
        "label_type": np.full(len(off_j), LabelType.ACCEPTED.value, dtype=object),
        "value": accepts[off_j, off_s].astype(np.float64),
        "request_ts": ts[off_j],
        "known_at": at(offer_min[off_j, off_s] + answer_min[off_j, off_s], off_j),
        "revision": np.zeros(len(off_j), np.int32),
        "source": np.full(len(off_j), LabelSource.PROVIDER_RESPONSE.value, dtype=object),
    }
    arr_j = np.nonzero(arrived)[0]
    cor_j = np.nonzero(corrected)[0]
    arr_labels = {
        "job_id": np.concatenate([day_ids[arr_j], day_ids[cor_j]]),
        "provider_id": np.concatenate([final_provider[arr_j], final_provider[cor_j]]),
        "label_type": np.full(len(arr_j) + len(cor_j), LabelType.ARRIVAL_MINUTES.value, dtype=object),
        "value": np.concatenate([reported[arr_j], final_eta[cor_j]]),
        "request_ts": np.concatenate([ts[arr_j], ts[cor_j]]),
        "known_at": np.concatenate([arrival_known[arr_j], correction_known[cor_j]]),
        "revision": np.concatenate([np.zeros(len(arr_j), np.int32), np.ones(len(cor_j), np.int32)]),
        "source": np.concatenate(
            [
                np.where(override[arr_j], LabelSource.MANUAL_OVERRIDE.value, LabelSource.GPS.value).astype(object),
                np.full(len(cor_j), LabelSource.CORRECTION.value, dtype=object),
            ]
        ),
    }
    labels = _table(LABELS, {c: np.concatenate([acc_labels[c], arr_labels[c]]) for c in acc_labels})

    # Events.
    ev: dict[str, list[np.ndarray]] = {c: [] for c in ("job", "provider", "type", "ts")}

    def emit(jobs: np.ndarray, providers: np.ndarray, kind: EventType, when: np.ndarray) -> None:
        ev["job"].append(jobs)
        ev["provider"].append(providers)
        ev["type"].append(np.full(len(jobs), kind.value, dtype=object))
        ev["ts"].append(when)

    all_j = np.arange(n_jobs)
    emit(all_j, np.full(n_jobs, -1), EventType.REQUEST, ts)
    emit(off_j, provider[off_j, off_s], EventType.OFFER, at(offer_min[off_j, off_s], off_j))
    answered_accept = accepts[off_j, off_s]
    emit(
        off_j[answered_accept], provider[off_j, off_s][answered_accept], EventType.ACCEPT,
        at(offer_min[off_j, off_s] + answer_min[off_j, off_s], off_j)[answered_accept],
    )
    emit(
        off_j[~answered_accept], provider[off_j, off_s][~answered_accept], EventType.DECLINE,
        at(offer_min[off_j, off_s] + answer_min[off_j, off_s], off_j)[~answered_accept],
    )
    re_j = np.nonzero(reassigned)[0]
    fst = np.minimum(first[re_j], k - 1)
    emit(re_j, provider[re_j, fst], EventType.REASSIGN, at(offer_min[re_j, fst] + answer_min[re_j, fst] + 5.0, re_j))
    emit(arr_j, final_provider[arr_j], EventType.ARRIVAL, at(arrival_min)[arr_j])
    can_j = np.nonzero(member_cancel | no_provider | (n_cand == 0))[0]
    emit(can_j, final_provider[can_j], EventType.CANCEL, at(cancel_min)[can_j])
    ov_j = np.nonzero(override)[0]
    emit(ov_j, final_provider[ov_j], EventType.OVERRIDE, arrival_known[ov_j])
    e_job = np.concatenate(ev["job"])
    # Number events within their job, not within the hour: numbered by hour, an incident that
    # adds one offer to one job would renumber every later event of every other job that hour.
    by_job = np.argsort(e_job, kind="stable")
    e_n = np.empty(len(e_job), dtype=np.int64)
    e_n[by_job] = np.arange(len(e_job)) - np.searchsorted(e_job[by_job], e_job[by_job], side="left")
    events = _table(
        EVENTS,
        {
            "event_id": np.char.add(day_ids[e_job].astype(str), np.char.add("-", e_n.astype(str))).astype(object),
            "job_id": day_ids[e_job],
            "provider_id": np.concatenate(ev["provider"]),
            "event_type": np.concatenate(ev["type"]),
            "event_ts": np.concatenate(ev["ts"]),
            "cell_id": cell[e_job],
            "region_id": region[e_job],
            "line_of_business": lob[e_job],
        },
    )

    requests = _table(
        REQUESTS,
        {
            "job_id": day_ids,
            "request_ts": ts,
            "member_id": np.char.add("M", np.char.zfill(member.astype(str), 9)).astype(object),
            "member_name": np.char.add(np.char.add(FIRST_NAMES[member % len(FIRST_NAMES)], " "), LAST_NAMES[(member // 7) % len(LAST_NAMES)]).astype(object),
            "member_phone": np.char.add("+1-555-", np.char.zfill((member % 10_000_000).astype(str), 7)).astype(object),
            "job_lat": lat,
            "job_lon": lon,
            "cell_id": cell,
            "region_id": region,
            "line_of_business": lob,
            "service_type": service,
            "vehicle_class": vehicle,
            "weather": weather,
            "n_candidates": n_cand.astype(np.int32),
        },
    )
    cj, cs = np.nonzero(valid)
    candidates = _table(
        CANDIDATES,
        {
            "job_id": day_ids[cj],
            "provider_id": provider[cj, cs],
            "request_ts": ts[cj],
            "cell_id": cell[cj],
            "region_id": region[cj],
            "line_of_business": lob[cj],
            "service_type": service[cj],
            "vehicle_class": vehicle[cj],
            "provider_cohort": cohort[cj, cs],
            "candidate_index": cs.astype(np.int32),
            "n_candidates": n_cand[cj].astype(np.int32),
        },
    )

    load = region_load(world, region, push_ts, jobs_per_hour_region)
    features = {
        "cell_traffic": {"keys": cell, "ts": push_ts, "values": traffic, "cols": job_cols},
        "region_load": {"keys": region, "ts": push_ts, "values": load, "cols": job_cols},
        "provider_status": {
            "keys": provider[cj, cs],
            "ts": push_ts[cj],
            "values": {name: v[cj, cs] for name, v in status.items()},
            "cols": {key: v[cj, cs] for key, v in cand_cols.items()},
        },
    }

    quote = 15.0 + 2.0 * np.where(valid, distance, 0.0)
    bucket = (hour // 4)
    offers = {
        "provider": provider[off_j, off_s],
        "accepted": accepts[off_j, off_s].astype(np.float64),
        "service": service_idx[off_j],
        "bucket": bucket[off_j],
        "lob": lob_idx[off_j],
        "vehicle": vehicle_idx[off_j],
        "region": region[off_j],
        "hour": hour[off_j],
    }
    fj = np.nonzero(has_final)[0]
    assignments = {
        "provider": final_provider[fj],
        "arrived": arrived[fj].astype(np.float64),
        "cancelled": member_cancel[fj].astype(np.float64),
        "reassigned": reassigned[fj].astype(np.float64),
        "eta": final_eta[fj],
        "late": (final_eta[fj] > quote[fj, np.minimum(final[fj], k - 1)] + 10.0).astype(np.float64),
        "eta_error": final_eta[fj] - quote[fj, np.minimum(final[fj], k - 1)],
        "service": service_idx[fj],
        "bucket": bucket[fj],
        "cell": cell[fj],
        "hour": hour[fj],
        "region": region[fj],
        "lob": lob_idx[fj],
        "all_cells": cell,
        "all_hours": hour,
        "all_regions": region,
        "all_lobs": lob_idx,
        "all_services": service_idx,
        "all_cancelled": (member_cancel | no_provider).astype(np.float64),
    }
    return HourOutcome(requests, candidates, events, labels, features, offers, assignments)
