"""`make bench`: run every benchmark, then write docs/PERFORMANCE.md from their JSON lines.

Each benchmark is a script in this folder that ends by printing one JSON object on its last line.
The tables in PERFORMANCE.md are generated from those objects; the prose around them lives in
PERFORMANCE_NOTES below so the file can be regenerated without losing it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "PERFORMANCE.md"

# name -> (title, what the figures mean, {key: description})
DESCRIPTIONS: dict[str, tuple[str, str, dict[str, str]]] = {
    "crypto_core": (
        "Pure core: per-packet and per-message costs",
        "Microseconds per operation (median of 7 repeats), an 84-byte voice payload (frame_no + "
        "an 80-byte Opus frame, 32 kb/s at 20 ms). `ref_*` rows are the bare primitives measured "
        "in the same run; `ratio_*` rows compare against them.",
        {
            "ref_aesgcm_seal_100B_us": "reference: bare AES-256-GCM seal, reused AESGCM object",
            "ref_hmac_copy_us": "reference: pre-keyed HMAC-SHA256 copy + update",
            "seal_us": "SenderKey.seal (header, nonce, AES-256-GCM)",
            "seal_and_hop_mac_us": "seal + c2s hop MAC: the sender's cost per channel",
            "receive_open_us": "VoiceReceiver.receive, datagram delivered (all checks + AEAD)",
            "receive_bad_mac_us": "receive, dropped at the hop MAC (forged or misdirected)",
            "receive_replay_us": "receive, dropped by the replay window",
            "relay_check_and_remac_us": "relay: c2s MAC check + replay window + one s2c re-MAC",
            "relay_fanout_9_python_us": "relay: one datagram's 9 copies into a sendmmsg batch, "
            "filled by Python (body, s2c MAC, name, iovecs; no system call)",
            "relay_fanout_9_native_us": "the same, filled by the native fan-out (_fanout.c)",
            "ratio_fanout_native_to_python": "native / Python fan-out",
            "keydist_build_1_us": "KeyDist for 1 recipient (HPKE ML-KEM-768+X25519, Ed25519)",
            "keydist_build_10_us": "KeyDist for 10 recipients",
            "keydist_build_48_us": "KeyDist for 48 recipients (one full batch)",
            "keydist_open_us": "open and verify a KeyDist",
            "text_seal_100B_us": "text message seal + Ed25519 signature",
            "text_open_100B_us": "text message verify + open",
            "control_encode_voice_tunnel_us": "control frame encode of a tunnelled datagram",
            "control_decode_voice_tunnel_us": "control frame decode + schema validation",
            "ratio_seal_to_bare_aesgcm": "seal / bare AES-GCM",
            "ratio_receive_to_bare_aesgcm_plus_hmac": "receive / (bare AES-GCM + HMAC)",
        },
    ),
    "bundle": (
        "Bundle: size unpacked and launch to window",
        "The one-folder PyInstaller bundle (`make bundle`, dist/voipclient) on Linux x86-64: "
        "apparent size of every file (the budget is 150 MB). Launch to window: from just before "
        "the process is spawned until the main window is exposed (`--startup-probe`), with a "
        "fresh home directory, audio devices opened on the PulseAudio null sink and global "
        "hotkeys started, under Xvfb; 10 runs (the budget is 1.5 s).",
        {
            "unpacked_mib": "total size, MiB (2^20 bytes)",
            "unpacked_mb": "total size, MB (10^6 bytes)",
            "files": "files in the bundle",
            "largest_parts": "the largest entries of _internal/",
            "launch_to_window_first_ms": "the first of the runs (coldest caches)",
            "launch_to_window_median_ms": "median over the runs",
            "launch_to_window_max_ms": "slowest run",
            "venv_launch_to_window_median_ms": "the same from the venv (`python -m voipclient`)",
            "runs": "runs of each",
        },
    ),
    "gui_stalls": (
        "The window never freezes: the longest GUI stall per flow",
        "The real desktop app in-process under Xvfb with its devices on the PulseAudio null sink, "
        "real relay processes; a 10 ms QTimer (the UI tests' probe) measures the event loop's "
        "longest gap while each flow runs, from the user's action until it is done plus 0.5 s. "
        "The target is 50 ms.",
        {
            "target_ms": "the target for every flow",
            "connect_worst_ms": "first connection: identity key (keyring), TLS, login, view",
            "reconnect_worst_ms": "the relay killed and restarted on its port; the app reconnects",
            "server_switch_worst_ms": "from one relay to another while connected",
            "settings_worst_ms": "bitrate, noise suppression and threshold applied",
            "device_change_worst_ms": "the input device switched: the audio engine rebuilt",
            "disconnect_worst_ms": "leaving the server",
            "flows_over_target": "flows whose worst stall is above the target",
        },
    ),
    "audio_host": (
        "The audio host process: added latency, idle streams, restart",
        "Real PortAudio on the PulseAudio null sink, 20 ms frames. Delivery: for each frame an "
        "input callback publishes, the delay until a thread waiting like the capture worker has "
        "read it; for each frame an output callback takes, the delay until a thread waiting like "
        "the playback worker has written the next one; once with the engine in this process "
        "(woken through a threading.Event) and once in the audio host (shared-memory rings, woken "
        "through its wake pipe). The added mouth-to-ear latency is the difference of the medians, "
        "both directions summed (target <= 1 ms). Idle streams: from 'wanted' (a push-to-talk "
        "press, voice arriving) to the first callback of a stopped stream. Restart: from SIGKILL "
        "to the new host's first input and output callbacks (target < 1 s).",
        {
            "window_s": "seconds of delivery measured per engine",
            "in_process_capture": "input callback → capture thread, engine in-process, ms",
            "host_capture": "input callback → capture thread, engine in the audio host, ms",
            "in_process_refill": "output callback → playback thread's next frame, in-process, ms",
            "host_refill": "output callback → playback thread's next frame, audio host, ms",
            "added_latency_ms": "what the audio host adds (medians, capture + playback), ms",
            "target_added_latency_ms": "the target for added_latency_ms",
            "press_to_first_input_ms_p50": "a stopped microphone wanted again (a press) → its "
            "first callback, median ms",
            "press_to_first_input_ms_max": "the same, slowest",
            "voice_to_first_output_ms_p50": "stopped speakers wanted again (voice) → their first "
            "callback, median ms",
            "voice_to_first_output_ms_max": "the same, slowest",
            "kills": "SIGKILLs of the audio host",
            "resume_median_ms": "SIGKILL → audio flowing again both ways, median ms",
            "resume_max_ms": "the same, slowest",
            "target_resume_ms": "the target for resume_max_ms",
        },
    ),
    "soak": (
        "Soak: the app among 20 bots that come, talk, go and get killed",
        "A real relay; the real desktop app under Xvfb on the PulseAudio null sink, in the Lobby, "
        "pressing push-to-talk now and then through `voipclient ptt`; a CPU hog beside it; 20 bot "
        "processes at a time living 6-40 s each (70 % talk, half join a second channel, a quarter "
        "SIGKILLed midway), their voice through a lossy proxy (5 %). Growth is measured from the "
        "end of a 15 s warm-up to the end. Targets: RSS growth <= 20 MB, no growth in threads or "
        "descriptors, no unhandled exception.",
        {
            "soak_s": "seconds of churn after the warm-up",
            "bots_at_a_time": "bot processes kept running",
            "bots_spawned": "bots started in all",
            "bots_killed": "bots SIGKILLed midway (no goodbye)",
            "bots_failed": "bots that exited with an error (should be 0)",
            "ptt_presses": "push-to-talk presses of the app through its control socket",
            "app_rss_growth_mb": "the app's resident memory growth, MB",
            "relay_rss_growth_mb": "the relay's resident memory growth, MB",
            "app_rss_every_30s_mb": "the app's RSS every 30 s from the warm-up on (a leak climbs "
            "steadily; bounded histories level off)",
            "app_threads_before_after": "the app's threads after the warm-up and at the end",
            "app_fds_before_after": "the app's open descriptors after the warm-up and at the end",
            "app_fds_new": "what descriptors opened since the warm-up point at",
            "app_exceptions_logged": "unhandled exceptions in the app's log (should be 0)",
            "app_errors_logged": "ERROR/CRITICAL lines in the app's log",
            "app_errors_first": "the first of them (errors shown to the user are logged too)",
            "relay_tracebacks": "tracebacks the relay logged (should be 0)",
            "audio_host_kills": "times the soak SIGKILLed the app's audio host process",
            "audio_host_restarts": "audio-host restarts the app logged (must equal the kills)",
            "audio_host_rss_before_each_kill_mb": "the audio host's RSS just before each kill "
            "(its memory across its lives), MB",
            "app_frames_lost_to_stalls": "frames the app's device lost because the app was late "
            "(capture overrun + playback underrun, warm-up included)",
            "app_state_at_end": "the app's connection state at the end (must be ready)",
            "target_rss_growth_mb": "the target for app_rss_growth_mb",
            "bot_errors": "the first errors of failed bots",
        },
    ),
    "idle": (
        "The client at rest: connected, push-to-talk, nobody talking",
        "The real desktop app (`python -m voipclient --connect`) on a real relay process, under "
        "Xvfb with its devices open on the PulseAudio null sink, the server's pin approved "
        "beforehand; after a warm-up, the app's process and its audio host are read from /proc "
        "over a fixed window. "
        "Wake-ups are the context switches of all its threads per second (the targets: <= 1.5 % "
        "of a core and <= 200 wake-ups/s on this machine).",
        {
            "state": "the connection state at the end (must be ready)",
            "window_s": "seconds measured, after the warm-up",
            "cpu_core_pct": "process CPU (utime + stime, every thread), % of one core",
            "rss_mib": "resident memory at the end, app and audio host each counted whole, MiB",
            "pss_mib": "the same as proportional set size (shared pages split), MiB",
            "processes": "processes measured (the app and its audio host)",
            "wakeups_per_s": "context switches of all threads per second",
            "threads": "threads in the process",
            "target_cpu_core_pct": "the target for cpu_core_pct",
            "target_wakeups_per_s": "the target for wakeups_per_s",
            "busiest_threads": "the threads that wake most",
        },
    ),
    "relay_load": (
        "Relay server under load: the largest load that holds",
        "A real server process pinned to one core; on the other core, simulated clients over "
        "real TLS and UDP (real login, joins, UDP address validation, AES-GCM sealing and hop "
        "MACs; 84-byte payloads, 50 packets/s per talker, talkers spread over the channels). "
        "The sweep raises the number of talkers at 500 clients in 50 channels (9 copies per "
        "datagram); the headline rows are the largest load with <= 0.1 % loss and p99 <= 10 ms "
        "(a load close to the limits is judged by the majority of up to 3 runs). Time through "
        "the relay includes both loopback hops and the load generator's own reaction time.",
        {
            "clients": "connected clients (TLS sessions with a validated UDP address)",
            "channels": "channels the clients are spread over (10 members each)",
            "talkers": "clients sending voice, 50 packets/s each",
            "in_pps": "datagrams into the relay per second",
            "forwarded_pps": "copies out of the relay per second (all checks, one s2c MAC each)",
            "loss_pct": "1 - copies received / copies expected",
            "p50_ms": "median time from send to receipt through the relay",
            "p99_ms": "99th percentile of that time",
            "server_cpu_pct": "server process CPU (utime + stime) over the window, % of one core",
            "server_rss_mb": "server resident memory at the end of the load",
            "criteria": "what a load must hold",
            "passed": "whether any load held the criteria",
            "payload_bytes": "voice payload per datagram (frame_no + a 20 ms Opus frame)",
            "packets_per_s_per_talker": "one datagram per 20 ms frame",
            "server_event_loop": "the server's event loop",
            "server_pinned_core": "the core the server ran on",
            "generator_pinned_core": "the core the load generator ran on",
            "per_ip_cap_raised": "the server's per-IP session cap was raised for the benchmark",
            "login_s": "time to log every client in over TLS",
            "join_s": "time until every join was confirmed",
            "bind_s": "time to validate every UDP address",
            "validated": "clients with a validated UDP address",
            "sessions_lost": "control sessions that closed during the benchmark (should be 0)",
            "server_traceback": "the server logged a traceback (should be false)",
            "steps": "every load: its figures, runs and passing runs",
            "ref_talkers": "load of the same-run reference (relay and bare loop alternated)",
            "relay_cpu_us_per_copy": "relay: process CPU per forwarded copy at that load",
            "ref_bare_cpu_us_per_copy": "reference: a bare uvloop UDP fan-out loop (no checks)",
            "ratio_relay_to_bare": "relay / bare loop CPU per copy (means of three runs each)",
            "ratio_pairs_min": "the lowest of the three relay/bare run pairs' ratios",
            "ratio_pairs_max": "the highest of them (the spread is the host's noise)",
            "heavy_ratio_pairs_min": "the same at the heavy load",
            "heavy_ratio_pairs_max": "the same at the heavy load",
            "relay_idle_cpu_pct": "relay: CPU % of a core with every session up and nobody "
            "talking (keepalives, UDP pings, timers), measured before the steps",
            "relay_idle_us_per_copy": "that idle cost per copy at the reference load",
            "ratio_relay_forwarding_to_bare": "relay minus its idle sessions / bare loop (which "
            "has no sessions)",
            "heavy_relay_idle_cpu_pct": "(the same idle measurement)",
            "heavy_relay_idle_us_per_copy": "the idle cost per copy at the heavy load",
            "heavy_ratio_relay_forwarding_to_bare": "relay minus its idle sessions / bare loop "
            "at the heavy load",
            "heavy_ref_talkers": "the same comparison at a heavy load (the relay ~90 % busy)",
            "heavy_relay_cpu_us_per_copy": "relay: CPU per copy at the heavy load",
            "heavy_ref_bare_cpu_us_per_copy": "bare loop: CPU per copy at the heavy load",
            "heavy_ratio_relay_to_bare": "relay / bare loop at the heavy load",
            "relay_copies_per_cpu_s": "copies one core would forward at 100 % CPU (estimate)",
            "ref_bare_copies_per_cpu_s": "the same for the bare loop",
            "ref_bare_p99_ms": "bare loop: p99 time through it",
            "ref_bare_loss_pct": "bare loop: loss",
            "runs": "relay runs in all",
            "relay_drops": "datagrams the relay dropped, by reason, over all runs (should be {})",
            "server_socket_drops": "kernel drops at the server's socket (the relay fell behind)",
            "listener_socket_drops": "kernel drops at the clients' sockets (the generator fell "
            "behind)",
            "server_send_dropped": "copies the server could not send (EAGAIN or error)",
            "send_errors": "datagrams the generator could not send",
            "unknown_datagrams": "received datagrams that matched no datagram sent",
            "stale_datagrams": "copies that arrived after their run had stopped listening",
            "s2c_mac_checked": "received copies whose s2c hop MAC was checked",
            "s2c_mac_bad": "of those, failed (should be 0)",
        },
    ),
    "relay_scaling": (
        "Relay on every core: one process, then two UDP workers, at the same load",
        "`relay_load.py` three times at the same load (500 clients in 50 channels, every check "
        "on): `--workers 1` with the server pinned to one core and the generator to the other; "
        "`--workers 2` with the same pinning (both workers and the control process share the "
        "server's core, so their CPU per copy compares directly with the single process's); "
        "`--workers 2` unpinned (spread over both cores, which the generator also needs: this "
        "2-core machine cannot show two saturated workers). A worker that costs what one "
        "process costs per copy means N cores forward N times the copies/s.",
        {
            "one_forwarded_pps": "--workers 1: copies forwarded per second",
            "one_cpu_us_per_copy": "--workers 1: server CPU per forwarded copy",
            "two_forwarded_pps": "--workers 2 on one core: copies forwarded per second",
            "two_cpu_us_per_copy": "--workers 2 on one core: CPU of control + workers per copy",
            "two_control_cpu_pct": "--workers 2: the control process's CPU (TLS, roster), %",
            "worker_cpu_us_per_copy": "each worker's CPU per copy it forwarded (mean)",
            "worker_vs_one_process": "that, relative to the single process (1.0: no cost to split)",
            "copies_per_core_s": "copies one worker forwards at 100 % of a core",
            "spread_forwarded_pps": "--workers 2 unpinned: copies forwarded per second",
            "workers_one_core": "per worker, on one core: CPU %, copies/s, CPU per copy",
            "workers_spread": "per worker, unpinned",
        },
    ),
    "relay_cluster": (
        "Relay cluster: two nodes on NATS, voice between them",
        "A real nats-server (JetStream, loopback) and two `voipclient-server --cluster` nodes; "
        "simulated clients (real TLS logins, E2E keys, UDP hop handshake) split so that every "
        "channel has members on both nodes; talkers send sealed voice at 50 packets/s. A copy "
        "whose talker and listener share a node went through one relay, the others through "
        "relay, NATS and relay: the difference of the two latency distributions is what the "
        "cluster adds (median of 3 runs).",
        {
            "local_p50_ms": "talker and listener on the same node: median send-to-receipt time",
            "cross_p50_ms": "on different nodes: median",
            "added_p50_ms": "cross minus local, median (target <= 1 ms)",
            "added_p99_ms": "cross minus local, 99th percentile (target <= 5 ms)",
            "nodes": "per node: CPU %, copies/s it sent, datagrams/s it published, CPU per copy",
            "failover_clients": "then node 2 is killed (SIGKILL): its clients, all reconnecting",
            "failover_back": "of them, logged in on node 1 and back in their channel",
            "failover_bound": "of them, with their UDP address validated on node 1 again",
            "failover_p50_s": "median time from the kill to being back in the channel",
            "failover_last_s": "the last client's time (the target: <= 5 s)",
            "failover_retried": "clients that needed more than one attempt",
            "failover_retry_reasons": "why those attempts failed",
            "failover_node1_queued_handshakes": "connections that waited for a handshake slot",
            "failover_node1_refused_handshakes": "connections refused for lack of one",
            "failover_node1_cpu_s": "node 1's CPU time during the failover",
            "failover_node1_tls_writes": "node 1's TLS writes (one per recipient per loop turn)",
            "failover_generator_cpu_s": "the load generator's (one process for every client)",
            "failover_wait_s": "until every moved client was back and bound",
        },
    ),
    "latency": (
        "Mouth-to-ear latency and the jitter buffer",
        "Through the product on loopback: a real relay process, two VoiceBots (real TLS login, "
        "KeyDist, UDP hop MACs, AES-GCM) on FileEngines driven by the bots' frame clocks; chirps "
        "at known capture times found in the mixer output by cross-correlation, 4 runs per frame "
        "size at different phases between the two bots' clocks, talk spurts of 1.4 s. From the "
        "sample entering the capture path (its frame complete minus its position in the frame) to "
        "it leaving the mixer; device buffers excluded. Floor = frame + Opus lookahead. The "
        "jitter-buffer table feeds the pure JitterBuffer synthetic arrival traces (20 s of "
        "jitter then 40 s clean, 3 s talk spurts with 0.5 s pauses, 3 seeds).",
        {
            "m2e_20ms_median_ms": "mouth-to-ear at 20 ms frames, median over all chirps",
            "m2e_20ms_p95_ms": "95th percentile",
            "m2e_20ms_excl_clock_phase_ms": "median without the render phase (arrival to the next "
            "output tick: the phase between two free-running audio clocks, uniform in 0..T, "
            "which only moves into the device buffer if the mixer renders on arrival): the "
            "figure the ≤ 35 ms target is about",
            "m2e_10ms_excl_clock_phase_ms": "the same at 10 ms frames (target ≤ 22 ms)",
            "m2e_10ms_median_ms": "mouth-to-ear at 10 ms frames, median",
            "m2e_10ms_p95_ms": "95th percentile",
            "mouth_to_ear": "per frame size: figures, floor, target and the median split "
            "(frame, lookahead, network + relay incl. encode/seal, render phase = arrival to the "
            "next render tick, jitter-buffer wait = whole frames held beyond it), the playback "
            "ring wait from the mixer to the engine, late/concealed frames",
            "jitter_buffer": "per frame size, jitter model (uniform 0..J, or Pareto alpha 2 with "
            "p95 = J) and J: delay beyond the fastest path (p50/p95, while jittered), target, "
            "late / concealed / FEC-played %, seconds until within 5 ms of the clean-path delay "
            "after the jitter stops (talk spurts; continuous speech: null = never)",
        },
    ),
    "client_cpu": (
        "Client CPU of the audio path",
        "Per output frame, driven as fast as possible over 10 s of audio, median of 5 runs "
        "(time.process_time), each run alternated with its reference: bare Opus decode of the "
        "same 10 packets (receive) or bare encode of the same frame (transmit). % of one core at "
        "real time = CPU time / audio time. Receive: 10 speakers in 3 channels, datagrams sealed "
        "by real SenderKeys with the s2c hop MAC -> VoiceReceiver -> VoicePlayback.push -> "
        "render_into (jitter buffer, Opus decode, mixer) -> playback ring. Transmit: capture "
        "ring -> TransmitGate -> VoiceSender (Opus once) -> SenderKeyScheduler.seal + c2s hop MAC "
        "x 3 channels. Stage columns are wall-clock µs per frame measured in the same loop.",
        {
            "receive_10x3_20ms_core_pct": "receive 10 speakers in 3 channels, 20 ms, % of a core",
            "receive_10x3_20ms_ratio_to_opus": "that / bare Opus decode x 10",
            "transmit_3ch_20ms_core_pct": "transmit to 3 channels, 20 ms, % of a core",
            "transmit_3ch_20ms_us_per_frame": "that in µs per frame",
            "transmit_3ch_20ms_ratio_to_opus": "that / bare Opus encode",
            "receive_target_core_pct": "target for the receive figure",
            "receive_10x3_20ms_stereo_core_pct": "receive as the desktop app plays it: stereo, "
            "the 3 channels placed left / centre / right, one a priority channel (ducking)",
            "stereo_placement_added_core_pct": "that minus the mono figure (noise: the runs "
            "differ by more than the mixer costs)",
            "mixer_us": "the mixer alone, 10 frames added and one mixed, µs per 20 ms frame: "
            "mono, stereo centred, stereo placed with a priority channel",
            "mixer_stereo_added_core_pct": "placement and ducking over the mono mixer, % of a core",
            "stereo_added_target_core_pct": "issue 17's limit for that",
            "rows": "every path x frame size x redundancy tier (0 clean, 4 = compact copies "
            "1,2,3 from the 16 kb/s second encoder): % of a core, µs per frame, the Opus "
            "reference, ratio, per-stage µs",
        },
    ),
    "aec": (
        "Echo cancellation on a simulated room",
        "Far-end speech through a simulated room (300 ms impulse response: 40 ms travel, RT60 "
        "250 ms) at an echo-path gain of -6/-12/-20 dB; the canceller runs in 20 ms int16 frames "
        "as the capture worker calls it. Two runs per gain: *converged* (G.168-style: 26.8 s of "
        "far end alone, then 5.4 s of the near end talking over it) and *early* (double talk "
        "from 5.4 s). ERLE: echo at the microphone over the output, far end alone, over 2-5 s "
        "and over the 5 s before double talk. PESQ-WB (16 kHz) of the near end during double "
        "talk against the clean near-end speech, and the unprocessed microphone's score. "
        "`product` is what the app runs (AEC3, handing over to the linear Kalman canceller once "
        "that removes 25 dB); `webrtc_aec3` and `kalman_linear` are its two halves alone; "
        "`speex_mdf` is measured only where the `pyaec` wheel is installed (not a dependency).",
        {
            "product_erle_db_min": "the product's canceller: the lowest ERLE over 2-5 s over "
            "the gains",
            "product_erle_converged_db_min": "its lowest ERLE once converged",
            "product_pesq_double_talk_min": "its lowest near-end PESQ-WB in double talk "
            "(converged)",
            "product_pesq_double_talk_early_max": "its best near-end PESQ-WB in double talk "
            "from 5.4 s (before the linear filter takes over: AEC3's)",
            "product_us_per_frame": "its CPU per 20 ms frame, µs (both halves run)",
            "erle_target_db": "issue 17's ERLE target",
            "pesq_target": "issue 17's double-talk PESQ-WB target",
            "erle_target_met": "ERLE target met at every gain",
            "pesq_target_met": "double-talk target met at every gain (converged)",
            "compared": "the cancellers measured in this run",
            "rows": "canceller x echo gain: ERLE (2-5 s, converged), PESQ-WB in double talk "
            "(converged, early), the microphone's PESQ-WB, µs per frame",
        },
    ),
    "ptt_latency": (
        "Push-to-talk: key press to the first datagram sent",
        "Real parts: xdotool key events on the (Xvfb) X display → pynput → PttService/PttRouter "
        "→ capture worker (WAV microphone in real time, DSP, TransmitGate, Opus) → "
        "ServerConnection (E2E seal + hop MAC, UDP) logged in to a real relay; 30 presses "
        "alternating F13 (channel "
        "A) and F14 (channel B). `key_to_router` includes starting the xdotool process; "
        "`router_to_encoded` is the wait for the next 20 ms capture frame (0..20 ms); "
        "`encoded_to_sent` is the queued hand-over to the connection's thread and the sealing.",
        {
            "presses": "key presses measured",
            "total_median_ms": "key press → first datagram to that channel sent, median",
            "total_p95_ms": "95th percentile",
        },
    ),
    "voice_quality": (
        "Speech quality under loss, jitter and a bottleneck, through the whole product",
        "PESQ-WB (ITU-T P.862.2, 16 kHz) of speech sent bot → lossy UDP proxy → real relay "
        "process → bot: capture (WAV, 80 Hz high-pass) → gate → Opus 32 kb/s 20 ms (+ the "
        "second encoder's compact copies) → AES-GCM + hop MAC → UDP, then E2E open → jitter "
        "buffer → copies / FEC / concealment → mixer → WAV. Loss and jitter hit the talker's "
        "voice datagrams; the bottleneck (64 kb/s token bucket on IPv4 bytes, as nftables' "
        "`limit rate`, with 2 % random loss below it) the listener's. The listener's loss "
        "reports reach the talker over the relay's control channel and its policy reacts, as "
        "in use. Every run is a **fresh session with speech from its first second** (no "
        "warm-up): 4 utterances (the two speech samples cut in halves), each aligned by "
        "cross-correlation and scored; `pesq_first3s` is the first 3 s of the first utterance "
        "alone, `pesq_after3s` the three later utterances. Each condition runs with the "
        "product's policy (`adaptive`) and milestone 1's (`legacy`: full copies, nothing until "
        "the first 2 s report), in the same run; `opus_*`: plain Opus 32 kb/s offline over the "
        "same loss model (concealment only) and on a clean path. `x_clean_bitrate`: the "
        "talker's payload bitrate (Opus + copies + framing) over that policy's clean-path run. "
        "`jb_delay_ms`: the listener's mean jitter-buffer delay; `redundancy_depth` x 20 ms is "
        "its wait for copies while it sees loss.",
        {
            "rows": "condition x policy: PESQ-WB (all, first 3 s, after 3 s, worst utterance), "
            "plain Opus, bitrate and its ratio to clean, the copies' share, the level at the "
            "end, when the level last changed, congestion detections, measured loss, what "
            "crossed the bottleneck, the listener's jitter-buffer delay and recoveries",
            "redundancy_levels": "what each redundancy tier does and the bitrate its copies "
            "add, compact (the product) and full (milestone 1)",
            "targets_met": "issue 15's targets, held against plain Opus 32 kb/s clean",
            "all_targets_met": "every target met",
        },
    ),
    "noise_suppression": (
        "Capture noise suppression: the libraries compared",
        "Speech samples mixed with white, fan-like and babble noise at 0/5/10 dB SNR, processed "
        "by each backend at 48 kHz in 10 ms blocks; STOI and PESQ-WB (16 kHz) of the output "
        "against the clean speech, CPU per 20 ms frame (median), noise-only attenuation. "
        "`chain_*`: the whole CaptureProcessor (high-pass, NS, VAD, AGC, limiter). The default "
        "is WebRTC NS (docs/audio-dsp.md explains the choice).",
        {
            "quality": "per backend and SNR: STOI, PESQ-WB, and their change against the noisy "
            "input",
            "quality_by_noise": "the same per noise type",
            "cpu": "per backend: µs per 20 ms frame and attenuation of noise alone",
            "unavailable": "backends whose library is not installed (not measured)",
        },
    ),
}

PERFORMANCE_NOTES = """\
What the figures say:
- Voice at 50 packets/s per speaker costs the receiver about 50 x receive_open_us per speaker per
  second: ten speakers are well under 1 % of one core for the crypto, far below the Opus decoder's
  ~130 µs per frame. A sender transmitting into three channels seals three times per frame.
- Dropping a forged datagram costs about the price of one HMAC (`receive_bad_mac_us`): a flood
  of garbage is cheap to refuse.
- KeyDist cost grows linearly with recipients (one HPKE seal each, 0.26-0.36 ms by machine); it
  runs on the network thread at join/leave, never on the audio path. Push-to-talk never waits
  for it.
- Relay (issue 18): with every check on (hop MAC, validated address, speak ACL, replay window,
  rate limit, one s2c MAC per copy) one core holds all 500 talkers of the layout, 225 k
  copies/s within 0.1 % loss and p99 10 ms at 500 clients in 50 channels (4.2 µs of CPU per
  copy at 92-95 %); it held 400 with the checks in Python and 275-300 before the native
  fan-out. The voice path is native end to end, one C call per wake-up of the socket:
  `vc_drain` (`_fanout.c`) reads it with `recvmmsg`, runs every check with its state, writes
  each copy and its MAC into the batch and sends it with one `sendmmsg`; Python sees only hop
  control, routes to install and full batches. The steadier figure is `ratio_relay_to_bare`,
  CPU per copy against a bare uvloop fan-out loop in the same run, each side the mean of three
  alternating runs (`ratio_pairs_min`/`max`: the spread of the pairs, which is the host's
  noise): 1.02 at 150 talkers and 0.95 at 300 in this run, 1.00 and 0.92 in the sweep before
  it, 0.95 and 0.94 in the one before that: ahead at 300 in every sweep, level at 150 (mean
  0.99), against 1.50-1.58 with the checks in Python and 2.07 with the batches filled in Python.
  That includes work the bare loop has no equivalent of: 500 live sessions cost 2.2-2.7 % of a
  core with nobody talking (keepalives, UDP pings every 3 s, timers; `relay_idle_cpu_pct`),
  0.16-0.37 µs of every copy (`ratio_relay_forwarding_to_bare` leaves it out), and one s2c
  HMAC per copy. The relay answers sooner than the bare loop (p50 0.2-0.3 ms against 0.37), so
  a wake-up carries only 2-4 datagrams (`copies_per_send_call` in the steps), and wake-ups are
  now what its cost depends on most: at 400 talkers it woke for 13.8 copies at a time and
  cost 5.1 µs per copy, at 500 for 34-42 and 4.2 µs (a rough fit of the two: ~20 µs per
  wake-up, ~3.7 µs per copy). Most of its CPU is the kernel's UDP send path, which the bare
  loop pays per copy too. The host's speed
  drifts by up to a third between runs, which is why only same-run ratios compare. Past one
  core: two workers sharing the server's one core cost 1.17x the single process per copy
  (`relay_scaling`; 1.30 before a wake-up was one C call, 1.03-1.09 while the per-datagram
  work was still in Python): each worker wakes for half the datagrams and the two switch on
  the one core. A worker costs 4.9 µs per copy at its half of the load, so two on their own
  cores would forward ~1.7x one process, N cores close to N times as much; this 2-core
  machine cannot show it.
- Relay cluster failover (issue 18): the run ends by killing node 2 under its 100 clients; all
  come back in their channels on node 1 (`failover_*`). The times are bounded by the load
  generator, one Python process for all 200 clients (`failover_generator_cpu_s` against
  `failover_wait_s`), not by node 1 (`failover_node1_cpu_s`). On this machine (its Python
  ~2.5x slower than the one of the earlier runs: `login_s` 51 s against 20 s) that is 11.6 s
  median and 17.5 s for the last (4.1 s and 7.3 s there).
- Relay benchmark clients: since issue 13 the simulated clients are the client core users run
  (`ClientConnection` with the end-to-end layer, through the same asyncio driver as the bot).
  Forwarding is unchanged by that (the relay sees the same datagrams; the last run held 350
  talkers, 158 k copies/s, where the old lighter client was measured at 150-175 talkers on a
  busier host: compare `ratio_relay_to_bare`, 1.45 in both). Two set-up figures are not
  comparable with the runs before it: `login_s` now includes each client's end-to-end work at
  login (session certificate, KeyDists for the Lobby it then leaves; 19 s for 500 clients in one
  generator process, 52-61 s before a peer's certificate was checked only once it shares a
  channel), and `server_rss_mb` (~390 MB, was ~70) counts the session keys and KeyDists of 500
  real clients passing through the server's TLS buffers: a figure for the relay-scaling issue.
- Voice quality (issue 15): every run is a fresh session with speech from its first second, and
  both policies run in the same `make bench`. At 10 % random loss the product scores 3.77
  PESQ-WB over the whole speech (first 3 s: 2.74) and 3.93 after 3 s, against 3.98 for plain
  Opus on a clean path, at 1.94x its clean bitrate (67 kb/s); milestone 1's policy scored 3.61
  (first 3 s: 1.59, unprotected until the first 2 s report) and 4.10 after 3 s at 2.75x. The
  price of compact copies is a little quality once the path is known (a frame rebuilt from a
  16 kb/s copy) for a third less bitrate, and what they buy is the first seconds. At 20 % random
  loss: 3.38 / 3.63 at 2.35x (milestone 1: 3.49 / 4.05 at 3.63x). Bursty loss: 3.25 vs 3.15 at
  10 % and 2.93 vs 2.91 at 20 %, at 2.4x against 3.63x. The wait for copies is 2 frames (40 ms)
  at 10 % random loss, 3-4 beyond 15 % or in bursts.
- Congestion (a 64 kb/s bottleneck on the listener's side, counted on IPv4 bytes, with 2 %
  random loss under it): milestone 1's policy escalated to three full copies, 95 kb/s into the
  64 kb/s link, and lost 40 % of it (PESQ-WB 3.02: four copies of each frame still get one
  through, but the link is flooded for everyone on it). The product saw its own rate raise the
  loss within seconds, capped itself at what the link delivered and settled at a 20 kb/s wideband
  primary with one 12 kb/s copy (29 kb/s payload, 3.7 % loss over the run including the first
  seconds): PESQ-WB 3.07. The first 3 s of a new session over such a link stay poor (2.16): the
  cold-start copy does not fit; the path memory starts the next session at the learned cap.
- Clean path: the cold-start copy is dropped 0.7 s after the first frame (two fast reports of
  25 clean frames) and nothing is spent after that; PESQ-WB 4.02 (milestone 1: 3.97), and the
  mouth-to-ear latency (table above) is unchanged. The second encoder costs CPU only while
  copies are sent: transmit at tier 4 is 4.2 % of a core instead of 2.2 % (client_cpu).
- libopus: `opuslib-next-bundled` (libopus 1.6.1) was measured and not adopted; its build has no
  Deep PLC or DRED and scores the same or slightly lower here (docs/dependencies.md).
- Latency: on a clean path the jitter buffer adds nothing (it starts a talk spurt up to 3 ms
  early rather than wait a frame for sender timing noise) and the bot renders the frame the engine
  takes in the same tick. What is left above the floor (frame + 6.5 ms lookahead) is ~1.3 ms of
  encode/seal/network and the render phase: the wait from arrival to the receiver's next output
  tick, uniform over one frame because the two audio clocks run free (T/2 on average, worst at
  one phase and zero at another). Without it the medians are well within the targets (~28 and
  ~18 ms); with it they are 1-3 ms above them (37 and 24 ms in the last run).
- Bundle: 141 MiB (148 MB) against a 150 MB budget. Getting there took leaving out what the app
  never loads (unused Qt modules and plugins, the GTK theme and its stack, the Wayland plugin
  stack: the window runs through XWayland), pruning libraries nothing needed any more, stripping
  symbols (not the auditwheel-patched numpy libraries: that breaks them), the desktop's own
  graphics/font/D-Bus libraries taken from the system as AppImages do, and Qt's ICU data trimmed
  from 32 to 2.4 MB. What is left is mostly Qt (55 MiB), numpy with its OpenBLAS (37 MiB; numpy's
  core links OpenBLAS even though the app does no linear algebra) and cryptography (11 MiB).
  Launch to window is ~0.55-0.6 s, under the venv's ~0.65-0.7 s (the bundle imports from one
  archive).
- The window never waits: every flow's longest GUI stall is under 50 ms (connect ~40 ms, the
  rest 10-35 ms). Two causes were found with the hang watchdog's stacks (diagnostics.py with a
  30-60 ms threshold): the identity key looked up in the keyring on the GUI thread (now on a
  thread of its own), and Qt setting its TLS backend up in the first QSslSocket (~70 ms holding
  the GIL, so the connection thread froze the window): now done once while the app starts.
- Soak (20 bots coming, talking and being killed, 5 % loss, a CPU hog, the audio host SIGKILLed
  every minute, on 2 cores; the table is a 10-minute run, `VOIPCLIENT_SOAK_S=600`; `make bench`
  runs 4 minutes): the app stays connected with no exception and no error, every host kill is
  restarted, threads and descriptors stay flat, and its memory grows 6.6 MB in 10 min
  (~0.3 MB per 30 s: the chat histories filling up to their 1000-entry bound, ~7 MB each when
  full, measured alone). Until this stop it grew 14-20 MB in 4 and 45 MB in 10 minutes: the
  soak showed a false "key holders differ" alarm on every join whose session key was not verified
  yet, each in a message box of its own (~85 KB of Qt a bot). The alarm is fixed, and errors now
  share one box. Beside the hog, 20 bot processes and the relay on the same two cores, the app's
  audio loses ~4 % of frames to late rendering (host restarts included); the host does not
  change that (the app's workers render, the host only moves samples).
- Idle (connected, push-to-talk, nobody talking): ~0.5 % of a core and ~40 wake-ups/s for the
  app and its audio host together (targets 1.5 % and 200/s; it was 2-4 % and ~800/s). What did
  it: nothing runs that nobody needs. While push-to-talk is idle the input stream is stopped
  (after 1 s; a press starts it from the hotkey's thread, first callback 20-40 ms later), and
  while nothing is heard the output stream is stopped (after 1 s of digital silence; arriving
  voice starts it), so PortAudio's callbacks and PulseAudio's client threads (~480 wake-ups/s
  together) sleep; the audio workers sleep on their rings' wake pipes and the host's main loop
  on its commands. What is left is the GUI's 100 ms poll for meters and talking marks, the
  supervisor's 4 checks a second and the connection's keep-alives. Memory: the audio host is a
  second Python process (~45 MiB RSS, most of it the interpreter and numpy it shares with the
  app's pages: PSS counts those once).
- Audio host: the shared-memory rings add 0.02-0.08 ms to the voice path (the wake pipe instead
  of an in-process event; target 1 ms). Killed with SIGKILL, it is back with audio flowing both
  ways in ~0.2 s (max ~0.25 s; ~0.6 s beside a CPU hog in the end-to-end test).
- Client CPU: receiving 10 speakers costs ~5 % of a core, ~1.4x bare Opus decoding; transmitting
  to three channels is ~3 %, essentially the Opus encoder (sealing three times is ~13 µs).
"""


def run(script: Path) -> dict[str, object]:
    # Every benchmark's numpy on one OpenBLAS thread, as in the app (voipclient/__init__.py),
    # whatever it imports first.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=1800, check=True
    )
    sys.stdout.write(proc.stdout)
    last = proc.stdout.strip().splitlines()[-1]
    result: dict[str, object] = json.loads(last)
    return result


def table(name: str, figures: dict[str, object]) -> str:
    title, intro, rows = DESCRIPTIONS.get(name, (name, "", {}))
    lines = [f"## {title}", "", intro, "", "| figure | value | what |", "|---|---|---|"]
    lists: dict[str, list[dict[str, object]]] = {}
    for key, value in figures.items():
        if key == "benchmark":
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lists[key] = value  # rendered as a table of their own below
            lines.append(f"| `{key}` | see below | {rows.get(key, '')} |")
            continue
        lines.append(f"| `{key}` | {value} | {rows.get(key, '')} |")
    for key, items in lists.items():
        cols = [c for c in items[0] if not isinstance(items[0][c], list | dict)]
        lines += ["", f"`{key}`:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(item.get(c, "")) for c in cols) + " |" for item in items]
    return "\n".join(lines) + "\n"


#: Modules in this folder that are not benchmarks (libraries for them: the lossy proxy, the relay).
HELPERS = frozenset({"run_all", "netem", "relay_process", "nats_process"})


#: Every run's figures, so the page can be rewritten (``--rewrite``) after its prose changes
#: without running the benchmarks again.
RESULTS = HERE.parent / "build" / "bench-results.json"


def main() -> int:
    if sys.argv[1:] == ["--rewrite"]:
        results = json.loads(RESULTS.read_text())
    elif sys.argv[1:2] == ["--only"]:
        # re-run some benchmarks, keep the others' last figures (after a change to one part)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        for name in sys.argv[2:]:
            results[name] = run(HERE / f"{name}.py")
        RESULTS.write_text(json.dumps(results, indent=1))
    else:
        scripts = sorted(p for p in HERE.glob("*.py") if p.stem not in HELPERS)
        results = {p.stem: run(p) for p in scripts}
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, Python {platform.python_version()}"
    parts = [
        "# Performance\n",
        f"Generated by `make bench` on {stamp} ({machine}; a shared 2-core machine: compare the "
        "ratios and same-run references, not absolute times across runs).\n",
        *(table(name, figures) for name, figures in results.items()),
        PERFORMANCE_NOTES,
    ]
    DOC.write_text("\n".join(parts))
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
