// A client-only Nuxt 3 app: the page talks to the gateway from the browser, so there is
// nothing to render on a server, and `nuxt generate` gives plain static files.
export default defineNuxtConfig({
  ssr: false,
  // No usage reports leave the machine (set NUXT_TELEMETRY_DISABLED=1 as well, as CI does).
  telemetry: false,
  devtools: { enabled: false },
  compatibilityDate: '2025-07-15',
  app: {
    head: {
      title: 'Local AI',
      // An inline icon: no /favicon.ico request to whatever host serves the page.
      link: [{ rel: 'icon', href: 'data:image/svg+xml,<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="%230a7d32"/></svg>' }],
    },
  },
  runtimeConfig: {
    public: {
      // NUXT_PUBLIC_GATEWAY_URL, e.g. https://10.8.0.1:8001 (no trailing slash needed).
      gatewayUrl: 'https://127.0.0.1:8001',
      // NUXT_PUBLIC_ALLOW_GATEWAY_PARAM=true lets `?gateway=<url>` pick another gateway.
      // Off by default: a link to a deployed page must not send your microphone elsewhere.
      allowGatewayParam: false,
    },
  },
})
