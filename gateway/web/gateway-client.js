/**
 * gateway-client.js: a small browser client for the Local AI Gateway.
 *
 * A plain ES module with no dependencies; the gateway serves it at `/gateway-client.js`,
 * and its own page (`/`) is built on it. It opens a WebRTC session (microphone → gateway,
 * events back on a data channel), reconnects after a drop, and turns every failure into a
 * {@link GatewayError} with a `code` a page can explain to a person.
 *
 *     import { GatewayClient } from "https://10.8.0.1:8001/gateway-client.js";
 *
 *     const client = new GatewayClient({ baseUrl: "https://10.8.0.1:8001", token });
 *     client.on("transcript.final", (e) => show("you", e.text));
 *     client.on("reply.delta", (e) => append(e.reply_id, e.text));
 *     client.on("state", ({ state }) => badge(state));  // see ConnectionState
 *     await client.connect({ audio: true });             // resolves on session.ready
 *     client.sendText("What is the weather like?");
 *     client.cancel();                                    // stop the reply (text and voice)
 *     await client.setAudio(false);                       // microphone off, session on
 *     await client.disconnect();
 *
 * From another origin, start the gateway with `--cors-origin https://your.app` and pass
 * `baseUrl` (or copy this file into your app). With `--auth api-key` or `--auth jwt`, pass
 * `token` (sent as `Authorization: Bearer`); a refused token rejects `connect()` with code
 * `unauthorized`. `connect({audio: false})` opens a session for typed text only.
 *
 * Events are the gateway's data-channel messages (DESIGN.md: `session.ready`,
 * `speech.started`, `speech.stopped`, `transcript.partial`, `transcript.final`,
 * `reply.started`, `reply.delta`, `reply.done`, `reply.cancelled`, `reply.audio.started`,
 * `reply.audio.done`, `session.ended`, `error`, `pong`), one callback list per `type`, plus `"*"` for every
 * one of them, `"state"` for connection changes ({@link StateChange}) and `"remote-audio"`
 * (below). Every type the gateway sends is passed on, including ones newer than this file.
 *
 * Live captions. While the person speaks, `transcript.partial` `{utterance_id, text,
 * stable_chars}` comes about once a second: `text.slice(0, stable_chars)` will not change
 * any more, the rest may. `transcript.final` for the same `utterance_id` replaces the
 * partials; when the utterance was only noise no final comes, so drop a leftover caption at
 * the next `speech.started`. `speech.stopped` says what ended the turn in `end_of_turn`:
 * `"silence"` (a pause), `"text"` (the words read as finished) or `"model"` (the turn
 * model decided).
 *
 * Spoken replies. The offer asks to send and receive audio; a gateway with a voice
 * (`session.ready`'s `tts.enabled`) speaks each reply on that track, between
 * `reply.audio.started` and `reply.audio.done` (`interrupted: true` when barge-in, `cancel()`
 * or `setSpeech(false)` cut it). The client plays it:
 *
 *   - `client.remoteStream` is one MediaStream for the client's whole life: the gateway's
 *     track is put in it when it arrives (and swapped after a reconnect), with a
 *     `"remote-audio"` event `{stream, track}`. Analyse or record it as you like.
 *   - `playback` (constructor option): `true` (default) plays it on an `<audio>` element the
 *     client makes; an `HTMLAudioElement` of yours (in the page) is used instead; `false`
 *     plays nothing (your page plays `remoteStream`). `client.audioElement` is the element.
 *   - Browsers play sound only after a user gesture (Safari: `play()` called within it).
 *     `connect()` starts the element playing synchronously, before its first `await`, so
 *     call `connect()` from a click (or key) handler. A page that connects otherwise calls
 *     `client.startPlayback()` from its next click. Reconnections reuse the playing element.
 *   - `client.muted = true` mutes playback here only (the gateway goes on speaking, events
 *     and all; the setting outlives reconnections); `client.setSpeech(false)` asks the
 *     gateway to stop speaking for this session (`session.update {tts: false}`: text only;
 *     also sent in the offer of a reconnection), `true` to speak again.
 *   - The offer's `session.echo_cancellation` tells the gateway whether the microphone
 *     cancels echo itself (from the track's `getSettings()`), so that its own canceller
 *     starts warm and a person talking over the first reply is heard at once.
 *
 * After a drop (the connection "failed", "disconnected" for over 5 s, or the data channel
 * closed) the client reconnects with back-off (1 s, 2 s, 4 s … 30 s), as a new session with
 * the same microphone, until `disconnect()`; `reconnect: false` turns that off. The new
 * session continues the same conversation: its offer presents the `conversation` token of
 * the last `session.ready`, and the gateway hands the history over (within its resume
 * window; else an `error` event `resume_expired` or `resume_invalid` says the conversation
 * starts afresh). `connect()` itself always starts a new conversation.
 *
 * When the gateway ends the session itself it says why first (`session.ended` `{reason}`),
 * and the client acts on it ({@link ENDED}): after `shutdown` (a restart), `worker-lost`
 * or `error` it reconnects with the same back-off; after `client` (a DELETE, from this page
 * or elsewhere), `idle-timeout` or `max-duration` it does not: the state goes to `closed`
 * with an error of code `session_ended` whose `reason` is the gateway's. Either way the
 * `"state"` change carries `ended: reason`.
 *
 * Error codes of the client's own: `unreachable`, `insecure_context`, `microphone_denied`,
 * `no_microphone`, `microphone_unavailable`, `unauthorized`, `forbidden`, `busy`,
 * `offer_rejected`, `connect_timeout`, `connection_lost`, `session_ended`, `not_connected`,
 * `closed`.
 */

/** How long the connection may be "disconnected" before it counts as dropped (ms). */
const DISCONNECTED_GRACE_MS = 5000;
/** Longest wait for ICE gathering; some networks never report "complete" (ms). */
const ICE_GATHERING_TIMEOUT_MS = 3000;
/** From answer to `session.ready`; longer means no media path (UDP blocked) (ms). */
const READY_TIMEOUT_MS = 15000;
/** Each HTTP request to the gateway (ms). */
const FETCH_TIMEOUT_MS = 10000;
/** Reconnection back-off: first delay, and the cap it doubles up to (ms). */
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;

/**
 * Why the gateway ends a session (`session.ended`'s `reason`), in words, and whether coming
 * back makes sense: not when the person (or their idleness, or the time limit) ended it.
 * @type {Record<string, {retry: boolean, text: string}>}
 */
export const ENDED = {
  client: { retry: false, text: "the session was ended" },
  "idle-timeout": { retry: false, text: "the session was idle for too long" },
  "max-duration": { retry: false, text: "the session reached its time limit" },
  shutdown: { retry: true, text: "the gateway is restarting or shutting down" },
  "worker-lost": { retry: true, text: "the gateway lost a worker it needs" },
  error: { retry: true, text: "the session failed on the gateway" },
};

/** Speech needs these on: without echo cancellation the gateway hears its own replies. */
const MICROPHONE_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};

/**
 * @typedef {"idle" | "connecting" | "connected" | "reconnecting" | "closed"} ConnectionState
 * `closed`: after `disconnect()`, or when reconnecting stopped (see `error`).
 *
 * @typedef {object} StateChange
 * @property {ConnectionState} state
 * @property {ConnectionState} previous
 * @property {number} [attempt]       reconnection attempt (1, 2, …) while `reconnecting`
 * @property {number} [retryInMs]     delay before that attempt
 * @property {GatewayError} [error]   why the connection dropped, or why retrying stopped
 * @property {string} [ended]         `session.ended`'s reason, when the gateway ended it
 *
 * @typedef {{type: string, [field: string]: any}} GatewayEvent
 * @typedef {(payload: any) => void} Listener
 *
 * @typedef {object} ClientOptions
 * @property {string} [baseUrl]   gateway origin, e.g. "https://10.8.0.1:8001"; "" = this page's
 * @property {string} [token]     API key or JWT, sent as `Authorization: Bearer`
 * @property {RTCIceServer[]} [iceServers]  default: what the gateway's `/config` says
 * @property {boolean} [reconnect]  retry with back-off after a drop (default true)
 * @property {HTMLAudioElement | boolean} [playback]  plays the spoken replies: `true` (default)
 *   on an element of the client's own, an element of yours, or `false`: not at all
 */

/** A failure with a machine-readable `code`, the HTTP `status` when there was one. */
export class GatewayError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{status?: number, cause?: unknown, retryable?: boolean, reason?: string}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, { cause: extra.cause });
    this.name = "GatewayError";
    this.code = code;
    this.status = extra.status;
    this.retryable = extra.retryable ?? false;
    /** For `session_ended`: the gateway's reason (see {@link ENDED}). */
    this.reason = extra.reason;
  }
}

export class GatewayClient {
  /** @param {ClientOptions} [options] */
  constructor({ baseUrl = "", token, iceServers, reconnect = true, playback = true } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    /** @type {string | undefined} may be changed between connections */
    this.token = token;
    this.iceServers = iceServers;
    this.reconnect = reconnect;
    /** @type {ConnectionState} */
    this.state = "idle";
    /** @type {GatewayEvent | null} the last `session.ready` */
    this.session = null;
    /** @type {MediaStream | null} what the microphone sends, if anything */
    this.stream = null;
    /** @type {MediaStream | null} the gateway's voice (see the header); made on connect() */
    this.remoteStream = null;
    /** @type {HTMLAudioElement | null} what plays `remoteStream`, per `playback` */
    this.audioElement = playback instanceof HTMLAudioElement ? playback : null;
    this._playback = playback !== false;
    this._muted = false;
    /** Whether the gateway should speak (setSpeech); a reconnection's offer says so. */
    this._speech = true;
    /** @type {string | undefined} the conversation a reconnection continues (session.ready) */
    this._conversation = undefined;
    /** @type {Map<string, Set<Listener>>} */
    this._listeners = new Map();
    /** @type {RTCPeerConnection | null} */
    this._pc = null;
    /** @type {RTCDataChannel | null} */
    this._channel = null;
    /** @type {RTCRtpSender | null} */
    this._sender = null;
    /** @type {string | null} */
    this._sessionUrl = null;
    this._ownsStream = false; // a stream we opened is ours to stop; a caller's is not
    this._generation = 0; // bumped by every (re)connect and disconnect: stale work stops
    this._retryTimer = 0;
    this._graceTimer = 0;
    this._attempt = 0;
    /** @type {string | undefined} why the gateway ended the session being retried */
    this._ended = undefined;
    /** Rejects the connection attempt in progress, if any. */
    this._abandon = () => {};
  }

  // --- events ---

  /**
   * Calls `callback` for each event of `type` (a gateway event type, `"state"` or `"*"`).
   * @param {string} type
   * @param {Listener} callback
   * @returns {() => void} a function that removes the callback
   */
  on(type, callback) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type)?.add(callback);
    return () => this.off(type, callback);
  }

  /** @param {string} type @param {Listener} callback */
  off(type, callback) {
    this._listeners.get(type)?.delete(callback);
  }

  /** @param {string} type @param {any} payload */
  _emit(type, payload) {
    const targets = [...(this._listeners.get(type) ?? [])];
    // "*" is for the gateway's events, not the client's own.
    if (type !== "state" && type !== "remote-audio") targets.push(...(this._listeners.get("*") ?? []));
    for (const callback of targets) {
      // One broken callback must not starve the others (or the client's own bookkeeping).
      try {
        callback(payload);
      } catch (err) {
        console.error(`gateway-client: a "${type}" callback threw`, err);
      }
    }
  }

  /** @param {ConnectionState} state @param {Partial<StateChange>} [detail] */
  _setState(state, detail = {}) {
    const previous = this.state;
    this.state = state;
    this._emit("state", { ...detail, state, previous });
  }

  // --- connecting ---

  /**
   * Opens a session and resolves with its `session.ready` event.
   *
   * `audio: true` asks for the microphone; a `MediaStream` is sent as it is (and left
   * running on disconnect: it is the caller's); `false` connects for typed text only
   * (the microphone can be added later with {@link setAudio}).
   * @param {{audio?: MediaStream | boolean}} [options]
   * @returns {Promise<GatewayEvent>}
   */
  async connect({ audio = true } = {}) {
    this.startPlayback(); // first, while the click that called connect() still counts
    await this.disconnect();
    this._conversation = undefined; // a new conversation; reconnections continue this one
    const generation = ++this._generation;
    this._setState("connecting");
    try {
      await this._checkReachable();
      if (audio instanceof MediaStream) this._useStream(audio, false);
      else if (audio) this._useStream(await openMicrophone(), true);
      return await this._open(generation);
    } catch (err) {
      if (generation === this._generation) {
        this._teardown();
        this._releaseStream();
        this._setState("closed", { error: asGatewayError(err) });
      }
      throw asGatewayError(err);
    }
  }

  /**
   * Starts (`true` or a stream) or stops (`null`/`false`) sending the microphone, without
   * renegotiating: the session and its conversation go on.
   * @param {MediaStream | boolean | null} audio
   */
  async setAudio(audio) {
    const stream = audio instanceof MediaStream ? audio : audio ? await openMicrophone() : null;
    this._releaseStream();
    if (stream) this._useStream(stream, !(audio instanceof MediaStream));
    await this._sender?.replaceTrack(this.stream?.getAudioTracks()[0] ?? null);
  }

  /** Ends the session (DELETE on the gateway), closes the connection, stops our microphone. */
  async disconnect() {
    this._generation++;
    const ended = this._teardown();
    this._releaseStream();
    this._attempt = 0;
    this._ended = undefined;
    if (this.state !== "idle" && this.state !== "closed") this._setState("closed");
    await ended;
  }

  // --- the gateway's voice ---

  /**
   * Starts the element that plays the gateway's voice (made here unless the page gave one).
   * Call it from a user gesture; `connect()` does. Harmless to call again.
   */
  startPlayback() {
    if (!this.remoteStream) this.remoteStream = new MediaStream();
    if (!this._playback) return;
    if (!this.audioElement) this.audioElement = new Audio();
    const element = this.audioElement;
    element.autoplay = true;
    element.muted = this._muted;
    // Assigned anew even when it is the same stream: that (re)loads it, and an element
    // does not take up a track added to its stream after it loaded (Chromium).
    element.srcObject = this.remoteStream;
    // Refused without a user gesture (NotAllowedError): the next call from one (Talk)
    // succeeds; until then there is nothing to hear, and nothing to report. Interrupted by
    // the next load (AbortError): that load plays instead.
    element.play().catch(() => {});
  }

  /** Playback muted here; the gateway still speaks (and sends its events). */
  get muted() {
    return this._muted;
  }

  set muted(value) {
    this._muted = Boolean(value);
    if (this.audioElement) this.audioElement.muted = this._muted;
  }

  /**
   * Asks the gateway to speak its replies (`true`), or to send text only (`false`: a reply
   * being spoken stops). Kept for reconnections and the next `connect()`, which ask for it
   * in their offer; throws `not_connected` (the wish kept all the same) when not connected.
   * @param {boolean} on
   */
  setSpeech(on) {
    this._speech = Boolean(on);
    this.send({ type: "session.update", tts: this._speech });
  }

  /** Whether the gateway was asked to speak (see {@link setSpeech}). */
  get speech() {
    return this._speech;
  }

  /** @param {MediaStreamTrack} track */
  _remoteTrack(track) {
    const stream = this.remoteStream ?? (this.remoteStream = new MediaStream());
    for (const old of stream.getAudioTracks()) {
      if (old !== track) stream.removeTrack(old);
    }
    if (!stream.getTrackById(track.id)) stream.addTrack(track);
    // Once played within a user gesture (connect() from a click), the element may play
    // again without one: a reconnection's voice plays too.
    if (this._playback) this.startPlayback();
    this._emit("remote-audio", { stream, track });
  }

  /** @param {MediaStream} stream @param {boolean} owned */
  _useStream(stream, owned) {
    this.stream = stream;
    this._ownsStream = owned;
  }

  _releaseStream() {
    if (this.stream && this._ownsStream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this._ownsStream = false;
  }

  async _checkReachable() {
    // A fetch that fails outright (TypeError) is an unreachable host or, over HTTPS, a
    // certificate this device does not trust: the browser does not say which.
    try {
      const response = await this._fetch("/health");
      if (response.ok) return;
      const message = `${this._origin()} answered /health with ${response.status}`;
      throw new GatewayError("unreachable", message);
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      throw new GatewayError(
        "unreachable",
        `cannot reach the gateway at ${this._origin()}: it is not running, the network ` +
          "is blocked, or this device does not trust its certificate",
        { cause: err, retryable: true },
      );
    }
  }

  /** @param {number} generation @returns {Promise<GatewayEvent>} */
  async _open(generation) {
    const iceServers = this.iceServers ?? (await this._gatewayIceServers());
    const pc = new RTCPeerConnection({ iceServers });
    this._pc = pc;
    // The gateway wants an audio section in every offer: a transceiver without a track
    // sends nothing until setAudio() attaches the microphone. sendrecv: the gateway speaks
    // its replies on the same section (it answers recvonly when it has no voice).
    const transceiver = pc.addTransceiver("audio", { direction: "sendrecv" });
    this._sender = transceiver.sender;
    const track = this.stream?.getAudioTracks()[0];
    if (track) await transceiver.sender.replaceTrack(track);
    const channel = pc.createDataChannel("events");
    this._channel = channel;
    pc.ontrack = (e) => {
      if (generation === this._generation && e.track.kind === "audio") this._remoteTrack(e.track);
    };

    /** @type {(event: GatewayEvent) => void} */
    let ready = () => {};
    /** @type {(err: GatewayError) => void} */
    let failed = () => {};
    const readyPromise = new Promise((resolve, reject) => {
      ready = resolve;
      failed = reject;
    });
    readyPromise.catch(() => {}); // handled below; an early throw must not leave it unhandled
    // disconnect() while this waits: give up now rather than at the ready timeout.
    this._abandon = () => failed(new GatewayError("closed", "disconnected while connecting"));
    channel.onmessage = (e) => {
      if (generation !== this._generation) return;
      let event;
      try {
        event = JSON.parse(e.data);
      } catch {
        return; // the gateway only sends JSON; ignore anything else rather than crash
      }
      if (event.type === "session.ready") {
        this.session = event;
        if (typeof event.conversation === "string") this._conversation = event.conversation;
        ready(event);
      }
      this._emit(event.type, event);
      if (event.type === "session.ended") {
        const ended = endedError(event.reason);
        failed(ended); // ended before it was ready: connect() says why
        this._sessionEnded(generation, ended);
      }
    };
    channel.onclose = () => {
      failed(new GatewayError("connection_lost", "the data channel closed before session.ready"));
      this._dropped(generation, "the gateway closed the session's data channel");
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") {
        failed(new GatewayError("connection_lost", "the WebRTC connection failed", { retryable: true }));
      }
      this._watchConnection(generation, pc);
    };

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, ICE_GATHERING_TIMEOUT_MS);
    if (generation !== this._generation) {
      throw new GatewayError("closed", "disconnected while connecting");
    }
    const response = await this._fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        sdp: pc.localDescription?.sdp,
        type: "offer",
        session: this._sessionSettings(),
      }),
    }).catch((err) => {
      const message = `POST /offer failed: ${err.message}`;
      throw new GatewayError("unreachable", message, { cause: err, retryable: true });
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw httpError(response, body);
    // Location is relative to the gateway, not to this page.
    const location = response.headers.get("Location") ?? `/sessions/${body.session_id}`;
    const sessionUrl = new URL(location, this._origin()).href;
    if (generation !== this._generation) {
      this._fetch(sessionUrl, { method: "DELETE" }).catch(() => {}); // opened too late: end it
      throw new GatewayError("closed", "disconnected while connecting");
    }
    this._sessionUrl = sessionUrl;
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });

    const timer = setTimeout(
      () =>
        failed(
          new GatewayError(
            "connect_timeout",
            "the gateway answered, but no WebRTC connection opened: UDP is probably " +
              "blocked between this device and the gateway",
            { retryable: true },
          ),
        ),
      READY_TIMEOUT_MS,
    );
    try {
      const event = await readyPromise;
      this._attempt = 0;
      this._ended = undefined;
      this._setState("connected");
      return event;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The offer's `session`: what the gateway should know from the start. */
  _sessionSettings() {
    /** @type {{tts?: boolean, echo_cancellation?: boolean, conversation?: string}} */
    const session = {};
    // A reconnection continues the conversation (its history stays with the gateway).
    if (this._conversation) session.conversation = this._conversation;
    // A reconnection keeps "text only" (setSpeech(false)); speaking is the default.
    if (!this._speech) session.tts = false;
    // Whether the microphone cancels echo itself (what the browser reports): then the
    // gateway's own canceller starts warm, and hears a person over the first reply at once.
    // Without a microphone yet, the one setAudio(true) opens will (MICROPHONE_CONSTRAINTS).
    const track = this.stream?.getAudioTracks()[0];
    const echo = track ? track.getSettings().echoCancellation : true;
    // (Newer browsers may say which echo: "all" or "remote-only" is cancelling it too.)
    if (echo !== undefined) {
      session.echo_cancellation = echo === true || echo === "all" || echo === "remote-only";
    }
    return session;
  }

  /** @returns {Promise<RTCIceServer[]>} */
  async _gatewayIceServers() {
    try {
      const response = await this._fetch("/config");
      const config = await response.json();
      return Array.isArray(config.ice_servers) ? config.ice_servers : [];
    } catch {
      return []; // right for a LAN or VPN, which is what the gateway defaults to as well
    }
  }

  /** @param {number} generation @param {RTCPeerConnection} pc */
  _watchConnection(generation, pc) {
    if (generation !== this._generation) return;
    const state = pc.connectionState;
    clearTimeout(this._graceTimer);
    if (state === "failed") {
      this._dropped(generation, "the connection failed");
    } else if (state === "disconnected") {
      // Often a brief network change (Wi-Fi roaming); ICE recovers by itself within seconds.
      this._graceTimer = setTimeout(
        () => this._dropped(generation, `the connection was lost for ${DISCONNECTED_GRACE_MS / 1000} s`),
        DISCONNECTED_GRACE_MS,
      );
    }
  }

  /**
   * The gateway ended the live session and said why: tear down (nothing to DELETE) and come
   * back only when that makes sense (see {@link ENDED}).
   * @param {number} generation @param {GatewayError} error
   */
  _sessionEnded(generation, error) {
    if (generation !== this._generation || this.state !== "connected") return;
    this._sessionUrl = null; // already gone on the gateway
    this._generation++;
    this._teardown();
    if (!this.reconnect || !error.retryable) {
      this._releaseStream();
      this._setState("closed", { error, ended: error.reason });
      return;
    }
    this._ended = error.reason;
    this._scheduleRetry(error);
  }

  /** The live connection is gone: tear it down and, if allowed, try again with back-off. */
  /** @param {number} generation @param {string} why */
  _dropped(generation, why) {
    // Only a session that was ready can drop; a failure while connecting rejects connect().
    // (While reconnecting, a failed attempt is _retry's to handle.)
    if (generation !== this._generation || this.state !== "connected") return;
    const error = new GatewayError("connection_lost", why, { retryable: true });
    this._generation++;
    this._teardown();
    if (!this.reconnect) {
      this._releaseStream();
      this._setState("closed", { error });
      return;
    }
    this._scheduleRetry(error);
  }

  /** @param {GatewayError} error */
  _scheduleRetry(error) {
    this._attempt += 1;
    const base = Math.min(RETRY_FIRST_MS * 2 ** (this._attempt - 1), RETRY_MAX_MS);
    // Jitter, so that many clients dropped by one gateway restart do not return in step.
    const retryInMs = Math.round(base * (0.8 + 0.4 * Math.random()));
    const generation = this._generation;
    const ended = this._ended;
    this._setState("reconnecting", { attempt: this._attempt, retryInMs, error, ended });
    this._retryTimer = setTimeout(() => this._retry(generation), retryInMs);
  }

  /** @param {number} generation */
  async _retry(generation) {
    if (generation !== this._generation) return;
    const attempt = ++this._generation;
    try {
      await this._checkReachable();
      await this._open(attempt);
    } catch (err) {
      if (attempt !== this._generation) return; // disconnect() ran meanwhile
      this._generation++;
      this._teardown();
      const error = asGatewayError(err);
      if (error.retryable || error.code === "connection_lost" || error.code === "busy") {
        this._scheduleRetry(error);
      } else {
        // A refused token or a bad offer will not get better by asking again.
        this._releaseStream();
        this._setState("closed", { error });
      }
    }
  }

  /** Closes the connection and ends the gateway's session, if one was opened. */
  _teardown() {
    const sessionUrl = this._sessionUrl;
    this._abandon();
    this._abandon = () => {};
    clearTimeout(this._retryTimer);
    clearTimeout(this._graceTimer);
    if (this._channel) this._channel.onclose = this._channel.onmessage = null;
    if (this._pc) {
      this._pc.onconnectionstatechange = this._pc.ontrack = null;
      this._pc.close();
    }
    this._pc = this._channel = this._sender = null;
    // The same stream (and playing element) carries the next session's voice.
    this.remoteStream?.getTracks().forEach((t) => this.remoteStream?.removeTrack(t));
    this._sessionUrl = null;
    this.session = null;
    if (!sessionUrl) return Promise.resolve();
    // Frees the gateway's slot now rather than when it notices the peer is gone.
    // keepalive: the request outlives the page when this runs on pagehide.
    return this._fetch(sessionUrl, { method: "DELETE", keepalive: true }).then(
      () => {},
      () => {},
    );
  }

  // --- talking ---

  /** Sends one client message (`{type: "text" | "cancel" | "session.update" | …}`). */
  /** @param {{type: string, [field: string]: any}} message */
  send(message) {
    if (!this._channel || this._channel.readyState !== "open" || this.state !== "connected") {
      throw new GatewayError("not_connected", "not connected to the gateway");
    }
    this._channel.send(JSON.stringify(message));
  }

  /** A typed message, answered as if it had been said. @param {string} text */
  sendText(text) {
    this.send({ type: "text", text });
  }

  /** Stops the reply in progress, its voice too (`reply.cancelled` with reason `client`,
   * or only `reply.audio.done` with `interrupted` when its text had already ended). */
  cancel() {
    this.send({ type: "cancel" });
  }

  // --- HTTP ---

  _origin() {
    return this.baseUrl || window.location.origin;
  }

  /**
   * @param {string} path a path on the gateway, or an absolute URL
   * @param {RequestInit} [init]
   */
  _fetch(path, init = {}) {
    const headers = new Headers(init.headers);
    if (this.token) headers.set("Authorization", `Bearer ${this.token}`);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    const url = new URL(path, this._origin() + "/");
    return fetch(url, { ...init, headers, signal: controller.signal, cache: "no-store" }).finally(() =>
      clearTimeout(timer),
    );
  }
}

// --- helpers ---

/** @returns {Promise<MediaStream>} */
async function openMicrophone() {
  // Browsers expose mediaDevices only in a secure context (https://, or http://localhost).
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new GatewayError(
      "insecure_context",
      "this page is not a secure context (open it over HTTPS), so the browser offers no microphone",
    );
  }
  try {
    return await navigator.mediaDevices.getUserMedia(MICROPHONE_CONSTRAINTS);
  } catch (err) {
    const name = err instanceof Error ? err.name : "";
    if (name === "NotAllowedError" || name === "SecurityError") {
      throw new GatewayError("microphone_denied", "microphone permission was denied", { cause: err });
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      throw new GatewayError("no_microphone", "no microphone was found", { cause: err });
    }
    // NotReadableError: another program holds the device, or the OS blocks it.
    const message = `the microphone could not be opened (${name})`;
    throw new GatewayError("microphone_unavailable", message, { cause: err });
  }
}

/**
 * The gateway does not trickle ICE: the offer must carry every candidate.
 * @param {RTCPeerConnection} pc @param {number} timeoutMs
 * @returns {Promise<void>}
 */
function iceGatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    // Candidates gathered by then are in localDescription; a STUN server that never
    // answers must not hold the whole connection up.
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * The gateway's JSON error (`{"error": {"code", "message"}}`) as a GatewayError.
 * @param {Response} response @param {any} body
 */
function httpError(response, body) {
  const message = body?.error?.message ?? `${response.status} ${response.statusText}`;
  const status = response.status;
  if (status === 401) return new GatewayError("unauthorized", message, { status });
  if (status === 403) return new GatewayError("forbidden", message, { status });
  if (status === 429 || status === 503) {
    return new GatewayError("busy", message, { status, retryable: true });
  }
  return new GatewayError(body?.error?.code ?? "offer_rejected", message, { status });
}

/**
 * `session.ended`'s reason as a GatewayError (code `session_ended`), retryable as {@link ENDED} says.
 * @param {unknown} reason
 */
function endedError(reason) {
  const name = typeof reason === "string" && reason in ENDED ? reason : "error";
  const known = ENDED[name];
  return new GatewayError("session_ended", known.text, { retryable: known.retry, reason: name });
}

/** @param {unknown} err @returns {GatewayError} */
function asGatewayError(err) {
  if (err instanceof GatewayError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new GatewayError("connection_lost", message, { cause: err, retryable: true });
}
