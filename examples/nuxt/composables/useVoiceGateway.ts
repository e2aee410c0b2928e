// Talks to the Local AI Gateway: the microphone goes out over WebRTC, the gateway's events
// come back on a data channel as reactive state, and its spoken replies come back on the
// same connection's audio track and play. Browser-only: call connect() from a click
// handler (that is what lets the voice play), never during server rendering.
import { computed, getCurrentInstance, onBeforeUnmount, readonly, ref, shallowRef, watch } from 'vue'
import { useRuntimeConfig } from '#app'

/** `idle` before connect() and after disconnect(); `closed`: the gateway ended the session
 * (`endedReason` says why, when it said so). */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'failed' | 'closed'

/** Why the gateway ended the session (`session.ended`). After `shutdown`, `worker-lost` or
 * `error`, connecting again (with a back-off) makes sense; after `client` (a DELETE),
 * `idle-timeout` or `max-duration`, ask the person first. */
export type EndedReason = 'client' | 'idle-timeout' | 'max-duration' | 'shutdown' | 'worker-lost' | 'error'

const ENDED_REASONS: readonly string[] = [
  'client', 'idle-timeout', 'max-duration', 'shutdown', 'worker-lost', 'error',
] satisfies EndedReason[]

/** Whether reconnecting after the gateway ended a session for `reason` makes sense. */
export function worthReconnecting(reason: EndedReason | null): boolean {
  return reason === 'shutdown' || reason === 'worker-lost' || reason === 'error'
}

export interface UserTurn {
  role: 'user'
  id: string
  text: string
  /** `voice`: a transcript of your speech; `text`: typed with sendText(). */
  source: 'voice' | 'text'
  timings?: Record<string, number>
}

export interface AssistantTurn {
  role: 'assistant'
  id: string
  /** Grows with each `reply.delta`; the whole answer once `status` is `done`. */
  text: string
  status: 'streaming' | 'done' | 'cancelled'
  cancelReason?: string
  /** The spoken reply: `speaking` from `reply.audio.started`; `done` when it played out,
   * `interrupted` when barge-in, cancel() or setSpeech(false) cut it. Unset: not spoken. */
  voice?: 'speaking' | 'done' | 'interrupted'
  /** `reply.done`'s, with `reply.audio.started`'s (`speech_end_to_first_audio_ms`, …). */
  timings?: Record<string, number>
}

export type Turn = UserTurn | AssistantTurn

/** What you are saying, before its transcript is final (`transcript.partial`): `stable` will
 * not change any more, `unstable` (after it) may. */
export interface PartialTranscript {
  utteranceId: string
  stable: string
  unstable: string
}

/** What decided that you had finished (`speech.stopped`'s `end_of_turn`): a long enough
 * pause, the words themselves reading as finished, or the gateway's turn model. */
export type EndOfTurn = 'silence' | 'text' | 'model'

const END_OF_TURN: readonly string[] = ['silence', 'text', 'model'] satisfies EndOfTurn[]

export interface GatewayError {
  code: string
  message: string
  retryable: boolean
}

export interface SessionInfo {
  sessionId: string
  protocol: number
  asr: { engine: string, model: string }
  llm: { model: string, available: boolean }
  /** Whether this session's replies are spoken, and by which engine and voice. */
  tts: { enabled: boolean, engine?: string | null, voice?: string | null }
}

export interface VoiceGatewayOptions {
  /** Default: runtimeConfig.public.gatewayUrl (NUXT_PUBLIC_GATEWAY_URL). */
  gatewayUrl?: string | (() => string)
  /** An API key or JWT, sent as `Authorization: Bearer …`; leave empty with `--auth none`. */
  token?: () => string | undefined
  /** How long to wait for ICE gathering before sending the offer anyway (ms). */
  iceGatheringTimeoutMs?: number
  /** The element that plays the spoken replies (e.g. a template ref to an `<audio>`);
   * default: one of the composable's own, outside the page. */
  audioElement?: () => HTMLAudioElement | null | undefined
}

export interface ConnectOptions {
  /** false: no microphone, typed messages only (the offer still carries an audio line). */
  microphone?: boolean
}

// What the gateway sends (DESIGN.md, "Data channel"); fields are checked where used.
interface GatewayEvent {
  type: string
  [field: string]: unknown
}

const MAX_ERRORS = 20
// A gateway behind a VPN that is down never answers: give up rather than hang.
const REQUEST_TIMEOUT_MS = 15_000

function problem(code: string, message: string, retryable = false): GatewayError {
  return { code, message, retryable }
}

/** A refusal with a reason to show: thrown inside connect(), reported in `errors`. */
class GatewayFailure extends Error {
  constructor(readonly detail: GatewayError) {
    super(detail.message)
  }
}

function str(value: unknown): string {
  return typeof value === 'string' ? value : ''
}

function numbers(value: unknown): Record<string, number> | undefined {
  return value !== null && typeof value === 'object' ? (value as Record<string, number>) : undefined
}

function noop(): void {}

/** `text` cut after `stableChars` characters, counted as the gateway counts them (code
 * points: an emoji is one). */
function splitStable(text: string, stableChars: unknown): [string, string] {
  const chars = Array.from(text)
  const n = Math.max(0, Math.min(chars.length, Math.trunc(Number(stableChars)) || 0))
  return [chars.slice(0, n).join(''), chars.slice(n).join('')]
}

function waitForIceGathering(pc: RTCPeerConnection, timeoutMs: number): Promise<void> {
  // The gateway does not trickle candidates: the offer must hold them all.
  return new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve()
    const done = (): void => {
      pc.removeEventListener('icegatheringstatechange', check)
      clearTimeout(timer)
      resolve()
    }
    const check = (): void => {
      if (pc.iceGatheringState === 'complete') done()
    }
    const timer = setTimeout(done, timeoutMs) // some networks never report "complete"
    pc.addEventListener('icegatheringstatechange', check)
  })
}

async function failureOf(response: Response): Promise<GatewayFailure> {
  // The gateway answers {"error": {"code", "message"}}; anything else is a proxy or a bug.
  const status = response.status
  const retryable = status === 429 || status >= 500
  try {
    const body = (await response.json()) as { error?: { code?: string, message?: string } }
    if (body.error?.message) {
      return new GatewayFailure(problem(body.error.code ?? `http_${status}`, body.error.message, retryable))
    }
  }
  catch {
    // not JSON
  }
  return new GatewayFailure(problem(`http_${status}`, `${status} ${response.statusText}`, retryable))
}

export function useVoiceGateway(options: VoiceGatewayOptions = {}) {
  const config = useRuntimeConfig()
  const baseUrl = (): string => {
    const url = typeof options.gatewayUrl === 'function' ? options.gatewayUrl() : options.gatewayUrl
    return (url || String(config.public.gatewayUrl)).replace(/\/+$/, '')
  }

  const state = ref<ConnectionState>('idle')
  const session = ref<SessionInfo | null>(null)
  const turns = ref<Turn[]>([])
  const errors = ref<GatewayError[]>([])
  /** True between `speech.started` and `speech.stopped`. */
  const hearing = ref(false)
  /** Your words so far while you speak, from `transcript.partial`; null once the final
   * transcript is in `turns`, and at the next `speech.started` (an utterance that was only
   * noise gets no final). */
  const partial = ref<PartialTranscript | null>(null)
  /** What ended your last turn, from `speech.stopped` (null: not said by this gateway). */
  const lastEndOfTurn = ref<EndOfTurn | null>(null)
  /** Why the gateway ended the session (`session.ended`); null while it goes on, or when it
   * ended without saying (a network drop). See worthReconnecting(). */
  const endedReason = ref<EndedReason | null>(null)
  const microphone = shallowRef<MediaStream | null>(null)
  /** The gateway's audio (spoken replies, when it has them): one stream for the
   * composable's life, its track swapped on each connection. */
  const remoteAudio = shallowRef<MediaStream | null>(null)
  /** True between `reply.audio.started` and `reply.audio.done`: the voice is playing. */
  const speaking = ref(false)
  /** Playback muted here only: the gateway goes on speaking (and sending its events). */
  const muted = ref(false)
  /** Whether the gateway is asked to speak (setSpeech); sent in the next offer too. */
  const speech = ref(true)
  let ownPlayer: HTMLAudioElement | null = null

  const replyText = computed(() => {
    const last = turns.value.at(-1)
    return last?.role === 'assistant' ? last.text : ''
  })
  const replying = computed(() => {
    const last = turns.value.at(-1)
    return last?.role === 'assistant' && last.status === 'streaming'
  })
  const transcripts = computed(() =>
    turns.value.filter((t): t is UserTurn => t.role === 'user' && t.source === 'voice'),
  )

  function player(): HTMLAudioElement {
    return options.audioElement?.() ?? (ownPlayer ??= new Audio())
  }

  /**
   * Plays the gateway's voice. Browsers allow sound only after a user gesture (Safari: a
   * play() within it), so connect() calls this before its first await; call it yourself
   * from a click if you connect otherwise. Once allowed, the element may play again later
   * (each new track reloads it) without one.
   */
  function startPlayback(): void {
    const stream = (remoteAudio.value ??= new MediaStream())
    const element = player()
    element.autoplay = true
    element.muted = muted.value
    // Assigned anew even when it is the same stream: that (re)loads it, and an element
    // does not take up a track added to its stream after it loaded (Chromium).
    element.srcObject = stream
    // NotAllowedError without a gesture, AbortError when the next load replaces this one.
    element.play().catch(noop)
  }

  watch(muted, (value) => {
    const element = options.audioElement?.() ?? ownPlayer
    if (element) element.muted = value
  })

  function remoteTrack(track: MediaStreamTrack): void {
    const stream = (remoteAudio.value ??= new MediaStream())
    for (const old of stream.getAudioTracks()) {
      if (old !== track) stream.removeTrack(old)
    }
    if (!stream.getTrackById(track.id)) stream.addTrack(track)
    startPlayback()
  }

  let pc: RTCPeerConnection | null = null
  let channel: RTCDataChannel | null = null
  let sessionUrl: string | null = null
  let attempt = 0 // a disconnect() during connect() makes the older attempt give up
  let lastFinal = '' // the utterance of the last transcript.final: a late partial is stale

  function report(error: GatewayError): void {
    errors.value = [...errors.value.slice(-(MAX_ERRORS - 1)), error]
  }

  function assistantTurn(id: string): AssistantTurn | undefined {
    // Reactive through the array: find() returns the proxied element.
    return turns.value.find((t): t is AssistantTurn => t.role === 'assistant' && t.id === id)
  }

  function onEvent(event: GatewayEvent): void {
    switch (event.type) {
      case 'session.ready':
        session.value = {
          sessionId: str(event.session_id),
          protocol: Number(event.protocol),
          asr: event.asr as SessionInfo['asr'],
          llm: event.llm as SessionInfo['llm'],
          tts: (event.tts as SessionInfo['tts'] | undefined) ?? { enabled: false },
        }
        lastFinal = '' // each session numbers its utterances afresh
        break
      case 'speech.started':
        hearing.value = true
        partial.value = null
        break
      case 'speech.stopped': {
        hearing.value = false
        const end = str(event.end_of_turn)
        lastEndOfTurn.value = END_OF_TURN.includes(end) ? (end as EndOfTurn) : null
        break
      }
      case 'transcript.partial': {
        const id = str(event.utterance_id)
        if (!str(event.text) || id === lastFinal) break
        const [stable, unstable] = splitStable(str(event.text), event.stable_chars)
        partial.value = { utteranceId: id, stable, unstable }
        break
      }
      case 'transcript.final':
        hearing.value = false
        lastFinal = str(event.utterance_id)
        if (partial.value?.utteranceId === lastFinal) partial.value = null
        if (str(event.text)) {
          const id = str(event.utterance_id)
          turns.value.push({ role: 'user', id, text: str(event.text), source: 'voice', timings: numbers(event.timings) })
        }
        break
      case 'reply.started':
        turns.value.push({ role: 'assistant', id: str(event.reply_id), text: '', status: 'streaming' })
        break
      case 'reply.delta': {
        const turn = assistantTurn(str(event.reply_id))
        if (turn) turn.text += str(event.text)
        break
      }
      case 'reply.done': {
        const turn = assistantTurn(str(event.reply_id))
        if (turn) {
          turn.text = str(event.text) || turn.text
          turn.status = 'done'
          turn.timings = { ...turn.timings, ...numbers(event.timings) }
        }
        break
      }
      case 'reply.cancelled': {
        const turn = assistantTurn(str(event.reply_id))
        if (turn) {
          turn.status = 'cancelled'
          turn.cancelReason = str(event.reason)
        }
        break
      }
      case 'reply.audio.started': {
        speaking.value = true
        const turn = assistantTurn(str(event.reply_id))
        if (turn) {
          turn.voice = 'speaking'
          turn.timings = { ...turn.timings, ...numbers(event.timings) }
        }
        break
      }
      case 'reply.audio.done': {
        speaking.value = false
        const turn = assistantTurn(str(event.reply_id))
        if (turn) turn.voice = event.interrupted === true ? 'interrupted' : 'done'
        break
      }
      case 'error':
        report(problem(str(event.code), str(event.message), event.retryable === true))
        break
      case 'session.ended': {
        // The last event: the gateway closes the connection next. Nothing to DELETE.
        const reason = str(event.reason)
        endedReason.value = ENDED_REASONS.includes(reason) ? (reason as EndedReason) : 'error'
        void teardown('closed')
        break
      }
      // pong, and types added later: nothing to show
    }
  }

  function headers(extra: Record<string, string> = {}): Record<string, string> {
    const token = options.token?.()?.trim()
    return token ? { ...extra, Authorization: `Bearer ${token}` } : extra
  }

  async function iceServers(): Promise<RTCIceServer[]> {
    // GET /config needs no token; no servers is right on a LAN or WireGuard.
    const response = await fetch(`${baseUrl()}/config`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
    if (!response.ok) throw await failureOf(response)
    const body = (await response.json()) as { ice_servers?: RTCIceServer[] }
    return body.ice_servers ?? []
  }

  /** The offer's `session`: what the gateway should know from the start. */
  function sessionSettings(stream: MediaStream | null): Record<string, boolean> {
    const session: Record<string, boolean> = {}
    // Text only when setSpeech(false) said so; otherwise the gateway speaks if it can.
    if (!speech.value) session.tts = false
    // Whether the microphone cancels echo itself (as the browser reports it): then the
    // gateway's own canceller starts warm, and hears you over its first reply at once.
    const echo: unknown = stream?.getAudioTracks()[0]?.getSettings().echoCancellation
    if (echo !== undefined) {
      session.echo_cancellation = echo === true || echo === 'all' || echo === 'remote-only'
    }
    return session
  }

  async function connect(connectOptions: ConnectOptions = {}): Promise<void> {
    if (!import.meta.client) throw new Error('useVoiceGateway().connect() runs in the browser only')
    if (pc) return
    startPlayback() // first, while the click that called connect() still counts
    const mine = ++attempt
    state.value = 'connecting'
    errors.value = []
    endedReason.value = null
    try {
      const wantMic = connectOptions.microphone ?? true
      if (wantMic && !navigator.mediaDevices?.getUserMedia) {
        const message = 'The microphone needs a secure context: open this page over https:// or on localhost.'
        throw new GatewayFailure(problem('insecure_context', message))
      }
      const audio = { echoCancellation: true, noiseSuppression: true, channelCount: 1 }
      const [servers, stream] = await Promise.all([
        iceServers(),
        wantMic ? navigator.mediaDevices.getUserMedia({ audio }) : Promise.resolve(null),
      ])
      if (mine !== attempt) {
        stream?.getTracks().forEach(t => t.stop())
        return
      }
      microphone.value = stream
      const peer = (pc = new RTCPeerConnection({ iceServers: servers }))
      peer.onconnectionstatechange = () => {
        if (pc !== peer) return
        const s = peer.connectionState
        if (s === 'connected') state.value = 'connected'
        else if (s === 'failed') {
          report(problem('connection_failed', 'The WebRTC connection failed: is UDP open between you and the gateway?', true))
          void teardown('failed')
        }
      }
      peer.ontrack = (e) => {
        if (pc === peer && e.track.kind === 'audio') remoteTrack(e.track)
      }
      // Created before the offer, so the offer carries it (the gateway takes the first one).
      channel = peer.createDataChannel('events')
      channel.onclose = () => {
        // The gateway ended the session (DELETE elsewhere, idle or duration limit, shutdown).
        if (pc === peer) void teardown('closed')
      }
      channel.onmessage = (e: MessageEvent) => {
        if (pc !== peer) return // torn down: this connection's events are over
        let event: GatewayEvent
        try {
          event = JSON.parse(String(e.data)) as GatewayEvent
        }
        catch {
          report(problem('bad_event', 'The gateway sent an event that is not JSON'))
          return
        }
        onEvent(event)
      }
      // Send and receive: the gateway speaks its replies on the same audio section.
      if (stream) stream.getTracks().forEach(t => peer.addTrack(t, stream))
      else peer.addTransceiver('audio', { direction: 'sendrecv' })

      await peer.setLocalDescription(await peer.createOffer())
      await waitForIceGathering(peer, options.iceGatheringTimeoutMs ?? 3000)
      const response = await fetch(`${baseUrl()}/offer`, {
        method: 'POST',
        headers: headers({ 'Content-Type': 'application/json' }),
        body: JSON.stringify({
          sdp: peer.localDescription?.sdp,
          type: 'offer',
          session: sessionSettings(stream),
        }),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      })
      if (!response.ok) throw await failureOf(response)
      const answer = (await response.json()) as { sdp: string, type: 'answer', session_id: string }
      // Readable cross-origin only because the gateway names it in Access-Control-Expose-Headers.
      const location = response.headers.get('Location')
      const url = location ? new URL(location, `${baseUrl()}/`).href : null
      if (mine !== attempt) {
        // disconnect() was called meanwhile (and maybe connect() again): end just this one.
        if (url) void endSession(url)
        return
      }
      sessionUrl = url
      if (!url) {
        report(problem('no_location', 'The gateway did not expose the session Location: '
          + 'the session ends only when this page disconnects.'))
      }
      await peer.setRemoteDescription({ type: 'answer', sdp: answer.sdp })
    }
    catch (err) {
      if (mine !== attempt) return
      report(describe(err))
      await teardown('failed')
    }
  }

  function describe(err: unknown): GatewayError {
    if (err instanceof GatewayFailure) return err.detail
    if (err instanceof DOMException && err.name === 'NotAllowedError') {
      return problem('microphone_blocked', 'The microphone is blocked: allow it in the site settings.')
    }
    if (err instanceof DOMException && err.name === 'TimeoutError') {
      return problem('timeout', `No answer from the gateway at ${baseUrl()}: is it running, and the VPN up?`, true)
    }
    if (err instanceof TypeError) {
      // What fetch() throws for every network-level failure, CORS refusals included.
      const message = `Cannot reach the gateway at ${baseUrl()}: not running, its certificate not trusted, `
        + 'this page\'s origin not in its --cors-origin, or local network access not allowed for this site.'
      return problem('unreachable', message, true)
    }
    return problem('connect_failed', err instanceof Error ? err.message : String(err), true)
  }

  async function endSession(url: string): Promise<void> {
    // keepalive: it still goes out while the page unloads.
    const signal = AbortSignal.timeout(3000)
    await fetch(url, { method: 'DELETE', headers: headers(), keepalive: true, signal }).catch(() => undefined)
  }

  async function teardown(final: ConnectionState): Promise<void> {
    const [peer, dc, mic, url] = [pc, channel, microphone.value, sessionUrl]
    pc = channel = sessionUrl = null // from here on, the old connection's events are ignored
    microphone.value = null
    // The same stream (and playing element) carries the next connection's voice.
    remoteAudio.value?.getTracks().forEach(t => remoteAudio.value?.removeTrack(t))
    hearing.value = speaking.value = false
    partial.value = null
    state.value = final
    mic?.getTracks().forEach(t => t.stop())
    // DELETE before closing, or the gateway may see the peer leave first and answer 404.
    if (url && final !== 'closed') await endSession(url)
    dc?.close()
    peer?.close()
  }

  async function disconnect(): Promise<void> {
    attempt++
    await teardown('idle')
  }

  function send(message: Record<string, unknown>): boolean {
    if (channel?.readyState !== 'open') {
      report(problem('not_connected', 'Not connected to the gateway', true))
      return false
    }
    channel.send(JSON.stringify(message))
    return true
  }

  /** A typed question, answered like speech. */
  function sendText(text: string): void {
    const trimmed = text.trim()
    if (trimmed && send({ type: 'text', text: trimmed })) {
      turns.value.push({ role: 'user', id: `text-${turns.value.length}`, text: trimmed, source: 'text' })
    }
  }

  /** Stops the reply in progress, and its voice. */
  function cancel(): void {
    send({ type: 'cancel' })
  }

  /** Asks the gateway to speak its replies (true) or send text only (false: the voice in
   * progress stops). Kept for the next connection. */
  function setSpeech(on: boolean): void {
    speech.value = on
    if (channel?.readyState === 'open') send({ type: 'session.update', tts: on })
  }

  function clear(): void {
    turns.value = []
    errors.value = []
    if (channel?.readyState === 'open') send({ type: 'history.clear' })
  }

  if (getCurrentInstance()) onBeforeUnmount(() => void disconnect())

  return {
    state: readonly(state),
    session: readonly(session),
    turns: readonly(turns),
    transcripts,
    replyText,
    replying,
    hearing: readonly(hearing),
    partial: readonly(partial),
    lastEndOfTurn: readonly(lastEndOfTurn),
    endedReason: readonly(endedReason),
    speaking: readonly(speaking),
    /** Writable: `muted.value = true` mutes playback here (not the gateway's speech). */
    muted,
    speech: readonly(speech),
    errors: readonly(errors),
    microphone: computed(() => microphone.value),
    remoteAudio: computed(() => remoteAudio.value),
    gatewayUrl: computed(baseUrl),
    connect,
    disconnect,
    sendText,
    cancel,
    setSpeech,
    startPlayback,
    clear,
  }
}
