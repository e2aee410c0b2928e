// The built-in page: a talk button, typed messages, the conversation as it streams, and
// the reply spoken aloud (the gateway's voice on the WebRTC audio track).
// All the WebRTC work is in gateway-client.js (the module other front ends embed too);
// this file only turns its events into things a person can see and use.
//
// While the person speaks, `transcript.partial` shows their line in progress (the settled
// words, then the rest in grey); `transcript.final` turns that same element into the line
// they said. For tests: the line is `.msg[data-utterance-id="<id>"]`, `data-state`
// "partial" then "final" (`.msg.user` only once final); the grey tail is `.unstable`.
//
// When the gateway ends the session it says why (`session.ended`): the page shows it, and
// gateway-client.js reconnects only after a restart or a failure, not after a DELETE, an
// idle timeout or the time limit. For tests: `#connection[data-ended]` holds the reason.
//
// Timings go to the Performance API (performance.measure), so that devtools and the
// browser tests read the same numbers the page shows:
//   gateway:click→ready         Talk pressed → session.ready
//   gateway:speech-end→reply    last loud moment at the microphone → first reply text
//   gateway:send→reply          typed message sent → first reply text
//   gateway:speech-end→voice    last loud moment at the microphone → reply.audio.started
import { GatewayClient, GatewayError } from "/gateway-client.js";

const TOKEN_KEY = "local-ai-gateway.token"; // sessionStorage: gone when the tab closes
const LOUD_RMS = 0.02; // about -34 dBFS: speech, not room noise after noise suppression
const METER_INTERVAL_MS = 50;
const HINT_RESET_MS = 8000; // "Transcribing…" for longer than this means no words were heard
const CAPTION_DROP_MS = HINT_RESET_MS; // a caption with no final this long after the turn was noise

/** @param {string} id @returns {any} */
const $ = (id) => document.getElementById(id);
const ui = {
  connection: $("connection"),
  connectionText: $("connection-text"),
  retryIn: $("retry-in"),
  mic: $("mic"),
  micText: $("mic-text"),
  micLevel: $("mic-level"),
  disconnect: $("disconnect"),
  models: $("models"),
  problem: $("problem"),
  problemText: $("problem-text"),
  problemHelp: $("problem-help"),
  tokenForm: $("token-form"),
  token: $("token"),
  tokenError: $("token-error"),
  empty: $("empty"),
  conversation: $("conversation"),
  talk: $("talk"),
  talkLabel: $("talk-label"),
  hint: $("talk-hint"),
  composer: $("composer"),
  text: $("text"),
  cancel: $("cancel"),
  voice: $("voice"),
  voiceText: $("voice-text"),
  mute: $("mute"),
};

// The voice plays on the page's own <audio> element; Talk (connect) starts it playing
// within the click, as browsers' autoplay rules want.
const client = new GatewayClient({
  token: sessionStorage.getItem(TOKEN_KEY) || undefined,
  playback: $("reply-audio"),
});

let micOn = false;
/**
 * What the person asked for when the gateway wanted a token; done once a token is accepted.
 * @type {{audio: boolean, text: string | null} | null}
 */
let refused = null;
/** @type {{stop: () => void} | null} */
let meter = null;
let lastLoudAt = 0; // performance.now() of the last loud moment at the microphone
let retryCountdown = 0;
let hintReset = 0;
let cancelAsked = false; // the person pressed Stop reply (or Escape)
let hearing = false; // between speech.started and speech.stopped

// --- the conversation ---

/**
 * A turn: what the person said or typed, the reply, and the turn's timings.
 * @typedef {{li: HTMLElement, timings: Record<string, number>, startedAt: number,
 *   user?: HTMLElement, speechEndAt?: number, endOfTurn?: string, reply?: HTMLElement,
 *   replyText?: HTMLElement, firstDeltaAt?: number}} Turn
 */
/**
 * A line the person is still saying: shown from transcript.partial until its final.
 * @typedef {{turn: Turn, stable: HTMLElement, unstable: HTMLElement, drop?: number}} Caption
 */
/** @type {Map<string, Turn>} by utterance id */
const byUtterance = new Map();
/** @type {Map<string, {at: number, endOfTurn?: string}>} by utterance id: when the person
 * stopped speaking (the last loud moment here), and what ended the turn */
const speechEnds = new Map();
/** @type {Map<string, Caption>} by utterance id, until its transcript.final */
const captions = new Map();
/** @type {Set<string>} utterances whose final came: a late partial must not reopen them */
const settled = new Set();
/** @type {Map<string, Turn>} by reply id */
const byReply = new Map();
/** @type {Turn[]} typed turns waiting for their reply.started */
const typedWaiting = [];
/** @type {Turn | null} the turn whose reply is streaming */
let streaming = null;
/** @type {Map<string, Turn>} by reply id, until its voice ends (it may outlast the text) */
const voiced = new Map();
/** @type {Turn | null} the turn whose reply is being spoken */
let speaking = null;

/** @param {string} who @param {string} text @param {string} cls */
function message(who, text, cls) {
  const box = document.createElement("div");
  box.className = `msg ${cls}`;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  box.append(label, body);
  return { box, body };
}

/** @param {string | null} userText @param {string} kind @returns {Turn} */
function newTurn(userText, kind) {
  const li = document.createElement("li");
  li.className = "turn";
  /** @type {HTMLElement | undefined} */
  let user;
  if (userText !== null) {
    user = message(kind === "typed" ? "You typed" : "You said", userText, "user").box;
    li.append(user);
  }
  const timings = document.createElement("p");
  timings.className = "timings";
  li.append(timings);
  ui.conversation.append(li);
  ui.empty.hidden = true;
  scrollToEnd();
  return { li, user, timings: {}, startedAt: performance.now() };
}

/**
 * The person's line in progress, as a turn of its own so that the reply lands under it.
 * Not `.msg.user` until it is final: that is the line they said.
 * @param {string} utteranceId @returns {Caption}
 */
function newCaption(utteranceId) {
  const turn = newTurn(null, "");
  const { box, body } = message("You are saying", "", "user-partial");
  box.dataset.utteranceId = utteranceId;
  box.dataset.state = "partial";
  // Screen readers hear the line once it is final, not every revision of it.
  box.setAttribute("aria-busy", "true");
  const stable = document.createElement("span");
  const unstable = document.createElement("span");
  unstable.className = "unstable";
  body.append(stable, unstable);
  turn.li.prepend(box);
  turn.user = box;
  const caption = { turn, stable, unstable };
  captions.set(utteranceId, caption);
  return caption;
}

/**
 * `text` split after `stableChars` characters, counted as the gateway counts them (code
 * points, so that an emoji is not cut in two).
 * @param {string} text @param {unknown} stableChars @returns {[string, string]}
 */
function splitStable(text, stableChars) {
  const chars = Array.from(text);
  const n = Math.max(0, Math.min(chars.length, Math.trunc(Number(stableChars) || 0)));
  return [chars.slice(0, n).join(""), chars.slice(n).join("")];
}

/** Removes a caption whose final will not come (noise, or a session that ended). @param {string} id */
function dropCaption(id) {
  const caption = captions.get(id);
  if (!caption) return;
  captions.delete(id);
  clearTimeout(caption.drop);
  if (!caption.turn.reply) caption.turn.li.remove();
  ui.empty.hidden = ui.conversation.childElementCount > 0;
}

/** @param {string} id */
function markSettled(id) {
  settled.add(id);
  for (const old of settled) {
    if (settled.size <= 16) break;
    settled.delete(old);
  }
}

/** @param {Turn} turn */
function replyBox(turn) {
  if (!turn.reply) {
    const { box, body } = message("Assistant", "", "assistant");
    // Screen readers wait for the whole answer instead of reading every streamed word.
    box.setAttribute("aria-busy", "true");
    turn.li.insertBefore(box, turn.li.querySelector(".timings"));
    turn.reply = box;
    turn.replyText = body;
  }
  return turn;
}

/** @param {Turn} turn @param {string} note */
function endReply(turn, note) {
  if (turn.reply) {
    turn.reply.setAttribute("aria-busy", "false");
    if (note) addNote(turn, note);
  }
  if (streaming === turn) streaming = null;
  showCancel();
}

/** Stop reply is there while there is a reply to stop: its text or its voice. */
function showCancel() {
  ui.cancel.hidden = streaming === null && speaking === null;
}

/** @param {Turn} turn @param {string} note */
function addNote(turn, note) {
  if (!turn.reply || turn.reply.querySelector(".note")) return; // one note says it
  turn.reply.classList.add("cancelled");
  const p = document.createElement("p");
  p.className = "note";
  p.textContent = note;
  turn.reply.append(p);
}

/** @param {Turn} turn */
function showTimings(turn) {
  // The gateway's own timings, then the wait as this browser saw it.
  const labels = [
    ["speech_ms", "speech"],
    ["asr_ms", "ASR"],
    // Measured from the end of speech itself, not from the end-of-turn decision.
    ["speech_end_to_final_ms", "end of speech → text"],
    ["speech_end_to_first_token_ms", "end of speech → first word"],
    ["speech_end_to_first_audio_ms", "end of speech → voice"],
    ["here_ms", "you stopped → reply here"],
  ];
  const parts = labels
    .filter(([key]) => turn.timings[key] !== undefined)
    .map(([key, label]) => `${label} ${duration(turn.timings[key])}`);
  if (turn.endOfTurn) {
    parts.push(`turn ended by ${/** @type {Record<string, string>} */ (END_OF_TURN)[turn.endOfTurn] ?? turn.endOfTurn}`);
  }
  const line = turn.li.querySelector(".timings");
  if (line) line.textContent = parts.join(" · ");
}

/** What `speech.stopped`'s `end_of_turn` says decided that the person had finished. */
const END_OF_TURN = { silence: "a pause", text: "the words", model: "the turn model" };

/** @param {number} ms */
function duration(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function scrollToEnd() {
  // Follow the conversation only when the person has not scrolled up to read.
  const el = document.scrollingElement;
  if (el && el.scrollHeight - el.scrollTop - el.clientHeight < 200) {
    ui.conversation.lastElementChild?.scrollIntoView({ block: "end" });
  }
}

/** An `error` event from the gateway, in the conversation where it happened. */
const ERROR_TITLES = {
  llm_unavailable: "Ollama is not reachable",
  llm_model_missing: "The model is not installed",
  llm_timeout: "The model took too long",
  llm_stream_broken: "The answer broke off",
  rate_limited: "Too many messages",
  bad_message: "The gateway did not understand a message",
};

/** @param {{code: string, message: string}} event */
function showErrorEvent(event) {
  const li = document.createElement("li");
  li.className = "turn event-error";
  const title = document.createElement("strong");
  title.textContent = /** @type {Record<string, string>} */ (ERROR_TITLES)[event.code] ?? "Error";
  const text = document.createElement("p");
  text.textContent = event.message;
  li.append(title, text);
  ui.conversation.append(li);
  ui.empty.hidden = true;
  scrollToEnd();
}

// --- gateway events ---

client.on("session.ready", (e) => {
  performance.mark("gateway:ready");
  // A new session (after a reconnect, too) numbers its utterances and replies afresh.
  byUtterance.clear();
  speechEnds.clear();
  for (const id of [...captions.keys()]) dropCaption(id); // their finals will never come
  settled.clear();
  byReply.clear();
  voiced.clear();
  setSpeaking(null);
  typedWaiting.length = 0;
  const llm = e.llm.available ? e.llm.model : `${e.llm.model} (not available: transcripts only)`;
  const voice = e.tts?.enabled ? ` · voice ${e.tts.voice ?? e.tts.engine ?? ""}` : "";
  ui.models.textContent = `Whisper ${e.asr.model ?? ""} · ${llm}${voice}`;
  // The voice controls only where the gateway speaks (an older or text-only one does not).
  ui.voice.hidden = ui.mute.hidden = !e.tts?.enabled;
});

client.on("speech.started", (e) => {
  hearing = true;
  // A caption whose turn never ended gets no final; one whose turn ended waits for its
  // final on a timer (it may come after the person has started again).
  for (const [id, caption] of captions) {
    if (id !== e.utterance_id && caption.drop === undefined) dropCaption(id);
  }
  ui.mic.dataset.state = "speech";
  ui.micText.textContent = "Hearing you";
  ui.hint.textContent = "Listening… pause when you are done.";
});

client.on("speech.stopped", (e) => {
  hearing = false;
  ui.mic.dataset.state = micOn ? "on" : "off";
  ui.micText.textContent = micOn ? "Microphone on" : "Microphone off";
  ui.hint.textContent = "Transcribing…";
  // Noise can end an utterance that holds no words: then no transcript comes.
  clearTimeout(hintReset);
  hintReset = setTimeout(() => (ui.hint.textContent = restingHint()), HINT_RESET_MS);
  // The gateway decides the end after a pause; the last loud moment here is when the
  // person actually stopped, which is where their wait for an answer begins.
  speechEnds.set(e.utterance_id, { at: lastLoudAt, endOfTurn: e.end_of_turn ?? undefined });
  // Noise ends a turn that holds no words: then no final comes to settle its caption.
  const caption = captions.get(e.utterance_id);
  if (caption) {
    clearTimeout(caption.drop);
    caption.drop = setTimeout(() => dropCaption(e.utterance_id), CAPTION_DROP_MS);
  }
  // Noise makes utterances with no transcript: keep only the recent ones.
  for (const id of speechEnds.keys()) {
    if (speechEnds.size <= 16) break;
    speechEnds.delete(id);
  }
});

client.on("transcript.partial", (e) => {
  if (settled.has(e.utterance_id) || !e.text) return;
  let caption = captions.get(e.utterance_id);
  if (!caption) {
    caption = newCaption(e.utterance_id);
    // Its turn already ended (a partial that came late): the final is due, or never comes.
    if (speechEnds.has(e.utterance_id)) {
      caption.drop = setTimeout(() => dropCaption(e.utterance_id), CAPTION_DROP_MS);
    }
  }
  const [stable, unstable] = splitStable(e.text, e.stable_chars);
  caption.stable.textContent = stable;
  caption.unstable.textContent = unstable;
  scrollToEnd();
});

client.on("transcript.final", (e) => {
  clearTimeout(hintReset);
  markSettled(e.utterance_id);
  const caption = captions.get(e.utterance_id);
  /** @type {Turn} */
  let turn;
  if (caption) {
    // The line in progress settles where it is: the same element, now what was said.
    captions.delete(e.utterance_id);
    clearTimeout(caption.drop);
    turn = caption.turn;
    const line = /** @type {HTMLElement} */ (turn.user);
    line.className = "msg user";
    line.setAttribute("aria-busy", "false");
    /** @type {HTMLElement} */ (line.querySelector(".who")).textContent = "You said";
    /** @type {HTMLElement} */ (line.querySelector(".text")).textContent = e.text;
  } else {
    turn = newTurn(e.text, "spoken");
  }
  const box = /** @type {HTMLElement} */ (turn.user);
  box.dataset.utteranceId = e.utterance_id;
  box.dataset.state = "final";
  const end = speechEnds.get(e.utterance_id);
  speechEnds.delete(e.utterance_id);
  turn.speechEndAt = end?.at;
  turn.endOfTurn = end?.endOfTurn;
  if (end?.endOfTurn) box.dataset.endOfTurn = end.endOfTurn;
  turn.timings = { ...e.timings };
  byUtterance.set(e.utterance_id, turn);
  showTimings(turn);
  ui.hint.textContent = restingHint();
});

client.on("reply.started", (e) => {
  // A spoken turn is found by its utterance; a typed one is the oldest still waiting.
  const turn =
    (e.utterance_id ? byUtterance.get(e.utterance_id) : typedWaiting.shift()) ?? newTurn(null, "");
  if (e.utterance_id) byUtterance.delete(e.utterance_id);
  byReply.set(e.reply_id, replyBox(turn));
  voiced.set(e.reply_id, turn);
  // Replies the gateway did not speak (voice off, nothing speakable) never end here.
  for (const id of voiced.keys()) {
    if (voiced.size <= 16) break;
    voiced.delete(id);
  }
  streaming = turn;
  showCancel();
});

client.on("reply.delta", (e) => {
  const turn = byReply.get(e.reply_id);
  if (!turn?.replyText) return;
  if (turn.firstDeltaAt === undefined) {
    turn.firstDeltaAt = performance.now();
    if (turn.speechEndAt) {
      turn.timings.here_ms = turn.firstDeltaAt - turn.speechEndAt;
      const span = { start: turn.speechEndAt, end: turn.firstDeltaAt };
      performance.measure("gateway:speech-end→reply", span);
    } else {
      const span = { start: turn.startedAt, end: turn.firstDeltaAt };
      performance.measure("gateway:send→reply", span);
    }
    showTimings(turn);
  }
  turn.replyText.textContent += e.text;
  scrollToEnd();
});

client.on("reply.done", (e) => {
  const turn = byReply.get(e.reply_id);
  if (!turn) return;
  byReply.delete(e.reply_id);
  replyBox(turn);
  if (turn.replyText) turn.replyText.textContent = e.text; // the whole answer is authoritative
  Object.assign(turn.timings, e.timings);
  showTimings(turn);
  endReply(turn, "");
});

const CANCEL_NOTES = {
  "barge-in": "Stopped: you started speaking",
  error: "Stopped: an error (see below)",
};

client.on("reply.cancelled", (e) => {
  const turn = byReply.get(e.reply_id);
  if (!turn) return;
  byReply.delete(e.reply_id);
  replyBox(turn);
  // "client" is either the Stop button or a new typed message, which replaces the reply.
  const note =
    e.reason === "client"
      ? cancelAsked
        ? "Stopped: you cancelled it"
        : "Stopped: you sent a new message"
      : /** @type {Record<string, string>} */ (CANCEL_NOTES)[e.reason] ?? "Stopped";
  cancelAsked = false;
  endReply(turn, note);
});

client.on("reply.audio.started", (e) => {
  const turn = voiced.get(e.reply_id);
  if (!turn) return;
  setSpeaking(turn);
  Object.assign(turn.timings, e.timings);
  showTimings(turn);
  if (turn.speechEndAt) {
    const span = { start: turn.speechEndAt, end: performance.now() };
    performance.measure("gateway:speech-end→voice", span);
  }
});

client.on("reply.audio.done", (e) => {
  const turn = voiced.get(e.reply_id);
  if (!turn) return;
  voiced.delete(e.reply_id);
  if (speaking === turn) setSpeaking(null);
  // When the text was still streaming, reply.cancelled follows and says why.
  if (e.interrupted && streaming !== turn) {
    if (hearing) addNote(turn, "Voice stopped: you started speaking");
    else addNote(turn, cancelAsked ? "Voice stopped: you cancelled it" : "Voice stopped");
    cancelAsked = false;
  }
});

client.on("error", showErrorEvent);

client.on("session.ended", () => {
  // The session is over: a reply still streaming will never finish.
  if (streaming) endReply(streaming, "Stopped: the session ended");
});

// --- the voice ---

/** @param {Turn | null} turn the turn being spoken, or null */
function setSpeaking(turn) {
  speaking?.reply?.classList.remove("speaking");
  speaking = turn;
  turn?.reply?.classList.add("speaking");
  ui.voice.dataset.state = turn ? "speaking" : "idle";
  showVoice();
  showCancel();
}

function showVoice() {
  const muted = client.muted;
  ui.voice.dataset.muted = String(muted);
  if (speaking) ui.voiceText.textContent = muted ? "Assistant speaking (muted)" : "Assistant speaking";
  else ui.voiceText.textContent = muted ? "Voice muted" : "Voice on";
  ui.mute.setAttribute("aria-pressed", String(muted));
}

function onMute() {
  client.muted = !client.muted; // here only: the gateway goes on speaking
  showVoice();
}

// --- connection state ---

client.on("state", (change) => {
  const { state } = change;
  clearInterval(retryCountdown);
  ui.connection.dataset.state = state;
  if (change.ended) ui.connection.dataset.ended = change.ended;
  else if (state === "connected") delete ui.connection.dataset.ended;
  ui.disconnect.hidden = state !== "connected" && state !== "reconnecting";
  if (state === "connecting") ui.connectionText.textContent = "Connecting…";
  if (state === "connected") {
    ui.connectionText.textContent = "Connected";
    hideProblem();
  }
  if (state === "idle" || state === "closed") ui.connectionText.textContent = "Not connected";
  if (state !== "connected") setSpeaking(null); // a voice cut off by a drop never ends
  if (state === "reconnecting") {
    // A reply cut off by the drop will never finish.
    if (streaming) endReply(streaming, "Stopped: the connection dropped");
    const why = change.ended ? RECONNECT_WHY[change.ended] ?? "Session ended" : "Connection lost";
    ui.connectionText.textContent = `${why}: reconnecting (attempt ${change.attempt})`;
    // The countdown is for the eye only (aria-hidden): announced every second, it would
    // drown out everything else a screen reader has to say.
    const until = performance.now() + (change.retryInMs ?? 0);
    const tick = () => {
      const left = Math.ceil((until - performance.now()) / 1000);
      ui.retryIn.textContent = left > 0 ? ` in ${left} s` : "…";
    };
    tick();
    retryCountdown = setInterval(tick, 1000);
  } else {
    ui.retryIn.textContent = "";
  }
  if (state === "idle" || state === "closed") ui.voice.hidden = ui.mute.hidden = true;
  if (state === "closed") {
    if (streaming) endReply(streaming, "Stopped: disconnected");
    for (const id of [...captions.keys()]) dropCaption(id);
    setMic(false);
    // A failed connect() is reported where it was called; this is for drops.
    if (change.error && change.previous !== "connecting") showProblem(change.error);
  }
});

// --- the microphone ---

/** @param {boolean} on */
function setMic(on) {
  micOn = on;
  // The label says what a press does (Talk / Stop); aria-pressed as well would have a
  // screen reader announce "Stop, pressed", which reads as the opposite.
  ui.talk.dataset.live = String(on);
  ui.talkLabel.textContent = on ? "Stop" : "Talk";
  ui.mic.dataset.state = on ? "on" : "off";
  ui.micText.textContent = on ? "Microphone on" : "Microphone off";
  ui.hint.textContent = restingHint();
  meter?.stop();
  meter = on && client.stream ? levelMeter(client.stream) : null;
}

function restingHint() {
  return micOn ? "Listening. Press to switch the microphone off." : "Press to switch the microphone on.";
}

/**
 * Shows the microphone's level, and notes when it was last loud (for the speech-end timing).
 * @param {MediaStream} stream
 */
function levelMeter(stream) {
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  context.createMediaStreamSource(stream).connect(analyser); // not to the speakers
  const samples = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    if (rms > LOUD_RMS) lastLoudAt = performance.now();
    // CSSOM, not a style attribute: the page's policy forbids inline styles.
    ui.micLevel.style.transform = `scaleX(${Math.min(1, rms * 8).toFixed(3)})`;
  }, METER_INTERVAL_MS);
  return {
    stop() {
      clearInterval(timer);
      ui.micLevel.style.transform = "scaleX(0)";
      context.close().catch(() => {});
    },
  };
}

async function onTalk() {
  ui.talk.disabled = true;
  try {
    if (micOn) {
      await client.setAudio(false);
      setMic(false);
    } else if (client.state === "connected") {
      await client.setAudio(true);
      setMic(true);
    } else {
      performance.mark("gateway:click");
      await connect(true);
      performance.measure("gateway:click→ready", "gateway:click", "gateway:ready");
    }
  } catch (err) {
    if (isUnauthorized(err)) refused = { audio: true, text: null };
    showProblem(err);
  } finally {
    ui.talk.disabled = false;
  }
}

/** @param {boolean} audio whether to send the microphone */
async function connect(audio) {
  hideProblem();
  ui.hint.textContent = audio ? "Asking for the microphone…" : "Connecting…";
  try {
    await client.connect({ audio });
    setMic(audio);
  } catch (err) {
    setMic(false);
    throw err;
  }
}

// --- typed messages ---

async function onSend(/** @type {SubmitEvent} */ event) {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  try {
    // The first message opens the session (without the microphone: typing needs none).
    if (client.state !== "connected") await connect(micOn);
    sendTyped(text);
  } catch (err) {
    if (isUnauthorized(err)) refused = { audio: micOn, text };
    showProblem(err);
  }
}

/** @param {string} text */
function sendTyped(text) {
  client.sendText(text);
  typedWaiting.push(newTurn(text, "typed"));
  if (ui.text.value.trim() === text) ui.text.value = "";
}

function onCancel() {
  if (streaming === null && speaking === null) return;
  try {
    client.cancel();
    cancelAsked = true;
  } catch (err) {
    showProblem(err);
  }
}

// --- problems, in words ---

/** What `session.ended` means to the person, when the page does not reconnect. */
const ENDED_TITLES = {
  client: "The session was ended (from this page or another client).",
  "idle-timeout": "The session ended: nothing was said for too long.",
  "max-duration": "The session ended: it reached the gateway's time limit.",
};

/** The connection line while reconnecting after the gateway ended the session. */
const RECONNECT_WHY = {
  shutdown: "Gateway restarting",
  "worker-lost": "Gateway lost a worker",
  error: "Session failed",
};

/** @param {unknown} err */
const isUnauthorized = (err) => err instanceof GatewayError && err.code === "unauthorized";

/** @param {string} text @param {string} [help] */
function problem(text, help = "") {
  ui.problemText.textContent = text;
  ui.problemHelp.textContent = help;
  ui.problem.hidden = false;
}

function hideProblem() {
  ui.problem.hidden = true;
  ui.tokenForm.hidden = true;
}

/** @param {any} err a GatewayError (or anything thrown) */
function showProblem(err) {
  const origin = client.baseUrl || location.origin;
  switch (err?.code) {
    case "unreachable":
      return problem(
        "The gateway is not answering.",
        `Check that it is still running and that this device can reach ${origin}. Over ` +
          "HTTPS, this device must also trust the gateway's certificate (see “Trusting the " +
          "local CA” in the README).",
      );
    case "insecure_context":
      return problem(
        "This page cannot use the microphone: it is not a secure context.",
        "Open it over HTTPS (or as localhost on the gateway's own computer). You can still type.",
      );
    case "microphone_denied":
      ui.mic.dataset.state = "blocked";
      ui.micText.textContent = "Microphone blocked";
      return problem(
        "The browser was not allowed to use the microphone.",
        "Allow the microphone for this site (the icon beside the address bar, or the browser's site " +
          "settings), then press Talk again. You can still type.",
      );
    case "no_microphone":
      ui.mic.dataset.state = "blocked";
      ui.micText.textContent = "No microphone";
      return problem(
        "No microphone was found.",
        "Plug one in or check the system's sound settings. You can still type.",
      );
    case "microphone_unavailable":
      return problem(
        "The microphone could not be opened.",
        "Another program may be using it, or the system blocks this browser from it.",
      );
    case "unauthorized":
      // The form says what is wanted; the gateway's reason only helps once a token was sent.
      ui.problem.hidden = true;
      ui.tokenError.textContent = client.token
        ? `The gateway did not accept that token (${err.message}).`
        : "";
      sessionStorage.removeItem(TOKEN_KEY); // a refused token is not worth keeping
      ui.tokenForm.hidden = false;
      ui.token.focus();
      return;
    case "forbidden":
      return problem("The gateway refused this page.", err.message);
    case "busy":
      return problem("The gateway is busy.", `${err.message}. Try again in a moment.`);
    case "connect_timeout":
      return problem(
        "The gateway answered, but the audio connection did not open.",
        "UDP is probably blocked between this device and the gateway: allow it in the gateway's " +
          "firewall (see “Firewall and network” in the README).",
      );
    case "not_connected":
      return problem("Not connected to the gateway.", "Press Talk or send a message to connect.");
    case "session_ended":
      return problem(
        /** @type {Record<string, string>} */ (ENDED_TITLES)[err.reason] ?? `Session ended: ${err.message}.`,
        "Press Talk or send a message to start a new session.",
      );
    default:
      return problem("Something went wrong.", err?.message ?? String(err));
  }
}

// --- wiring ---

ui.talk.addEventListener("click", onTalk);
ui.composer.addEventListener("submit", onSend);
ui.cancel.addEventListener("click", onCancel);
ui.mute.addEventListener("click", onMute);
ui.disconnect.addEventListener("click", () => {
  setMic(false);
  client.disconnect();
});
ui.tokenForm.addEventListener("submit", async (/** @type {SubmitEvent} */ event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  client.token = token;
  ui.token.value = "";
  const wanted = refused ?? { audio: false, text: null };
  try {
    await connect(wanted.audio);
    refused = null;
    if (wanted.text) sendTyped(wanted.text);
  } catch (err) {
    showProblem(err);
  }
});
document.addEventListener("keydown", (event) => {
  // Escape stops the reply from anywhere on the page, as a person would expect.
  if (event.key === "Escape" && (streaming !== null || speaking !== null)) onCancel();
});
// Ends the gateway's session when the tab goes (the DELETE is sent with keepalive).
window.addEventListener("pagehide", () => client.disconnect());
