// The built-in client: microphone → WebRTC → the gateway; events back on a data channel.
"use strict";

const talk = document.getElementById("talk");
const stateEl = document.getElementById("state");
const speakingEl = document.getElementById("speaking");
const log = document.getElementById("log");
let pc = null;
let stream = null;
let sessionUrl = null;

function setState(text) { stateEl.textContent = text; }

function addLine(text, meta, cls) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  if (meta) {
    const m = document.createElement("div");
    m.className = "meta";
    m.textContent = meta;
    li.appendChild(m);
  }
  log.prepend(li);
}

function onEvent(msg) {
  switch (msg.type) {
    case "session.ready": setState("listening"); break;
    case "speech.started": speakingEl.textContent = "hearing you…"; break;
    case "speech.stopped": speakingEl.textContent = "transcribing…"; break;
    case "transcript.final": {
      speakingEl.textContent = "";
      const t = msg.timings || {};
      addLine(msg.text, `speech ${Math.round(t.speech_ms)} ms · ASR ${Math.round(t.asr_ms)} ms`);
      break;
    }
    case "error": addLine(msg.message, msg.code, "error"); break;
  }
}

function waitForIceGathering(peer) {
  // The gateway does not trickle candidates: send the offer once gathering is complete.
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (peer.iceGatheringState === "complete") {
        peer.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    peer.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);  // some networks never report "complete"
  });
}

async function start() {
  talk.disabled = true;
  setState("asking for the microphone…");
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 },
    });
  } catch (err) {
    setState("microphone blocked: allow it in the browser's site settings");
    talk.disabled = false;
    return;
  }
  pc = new RTCPeerConnection({ iceServers: [] });
  const channel = pc.createDataChannel("events");
  channel.onmessage = (e) => onEvent(JSON.parse(e.data));
  stream.getTracks().forEach((t) => pc.addTrack(t, stream));
  pc.onconnectionstatechange = () => {
    setState(pc.connectionState);
    if (pc.connectionState === "failed") stop();
  };
  setState("connecting…");
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const res = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    sessionUrl = res.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    talk.textContent = "Stop";
  } catch (err) {
    addLine(`Could not connect: ${err.message}`, null, "error");
    stop();
  }
  talk.disabled = false;
}

function stop() {
  if (sessionUrl) fetch(sessionUrl, { method: "DELETE" }).catch(() => {});
  sessionUrl = null;
  if (pc) pc.close();
  pc = null;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  talk.textContent = "Start";
  speakingEl.textContent = "";
  setState("idle");
}

talk.addEventListener("click", () => (pc ? stop() : start()));
