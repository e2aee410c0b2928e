// What the test page gets as `window.WHIP`: the WHIP client exactly as its package ships it.
export { WHIPClient } from "@eyevinn/whip-web-client";
