"""Website recording: a page (URL, .html file or folder) into an H.264 .mp4 background, frame-exact.

Exact mode installs a virtual clock before any page script runs (rAF, performance.now, Date, timers, CSS/Web
Animations), then for each frame sets the scroll position, advances the clock by exactly 1/fps and captures a JPEG
over CDP, piping frames straight into ffmpeg, so capture and encoding overlap. With a headless shell (Debian's
chromium-headless-shell, Playwright's headless_shell) the compositor runs only when told to: one
HeadlessExperimental.beginFrame per video frame draws it, and Chromium's screencast delivers its JPEG while the next
frame is drawn (_cdp.Screencast; a screenshot per beginFrame is the fallback); with a full Chromium,
Page.captureScreenshot. The pictures come over the recorder's own DevTools connection (_cdp.py), not through
Playwright's driver.
Fast mode takes one full-page screenshot and lets ffmpeg pan over it (static pages, no animation).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import itertools
import logging
import math
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import ffmpeg
from pydantic import BaseModel, ConfigDict, Field

from . import _process
from ._cdp import DirectPage, Screencast
from ._files import MP4_SUFFIXES, atomic_output, check_output_path
from ._netguard import BLOCKED_HEADER, guard_proxy
from ._pagevideo import VIDEO_URL, IntraVideos, intra_videos
from ._server import QuietHTTPServer, ThreadedServer, byte_range
from ._urls import redact_url
from .errors import (
    ConfigError,
    FrameLostError,
    NotAPageError,
    OutputCheckError,
    PageNavigatedError,
    RecordError,
    ToolMissingError,
)
from .normalize import check_video, mp4_options, x264_options
from .presets import VideoPreset, X264Preset, load_video_preset
from .probe import MediaInfo, probe
from .progress import Progress, ProgressCallback

log = logging.getLogger("assetprep.record")

ScrollMode = Literal["none", "smooth", "human"]
_MAX_DEPTH = 20000  # px: an infinite-scroll page is recorded down to here at most
_MAX_FULLPAGE = 16000  # px: Chromium's texture limit for one full-page screenshot


class RecordOptions(BaseModel):
    """Everything `assetprep record` can be told; the scroll words are those of Tavus's `properties`."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "background-1080p"
    duration: float = Field(default=10.0, gt=0, le=600)
    fps: int | None = Field(default=None, ge=1, le=60)
    viewport: tuple[int, int] | None = None  # CSS px; default: the preset's size / scale
    scale: float = Field(default=1.0, gt=0, le=4)
    scroll: ScrollMode = "none"
    scroll_depth: Literal["middle", "bottom"] | int = "middle"
    scroll_return: Literal["return", "halt"] = "return"
    keyframes: list[tuple[float, float]] | None = None  # (seconds, scroll y px), overrides `scroll`
    wait_for: str | None = None  # "networkidle" or a CSS selector
    hide: list[str] = Field(default_factory=list)
    show_cookie_banners: bool = False  # else the common consent managers' banners are hidden (_CONSENT_CSS)
    css: str | None = None
    js: str | None = None
    cookies: list[dict[str, Any]] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    dark: bool = False
    mode: Literal["exact", "fast"] = "exact"
    timeout: float = Field(default=60.0, gt=0)
    allow_http_errors: bool = False
    block_private_networks: bool = False
    jpeg_quality: int = Field(default=90, ge=30, le=100)
    # x264 shares the CPU with Chromium while recording: superfast, with the macroblock-tree rate control it turns
    # off put back (see _encoder). 300 frames of the bench's real page at CRF 20, 1080p: 7.5 s of CPU against 9.1 s
    # for veryfast, 4.63 MB against 4.74, SSIM 0.9953 both (plain superfast: 6.0 MB); 720p: 3.2 s against 4.2 s,
    # +3% bytes; examples/page.html 720p: 2.9 s against 4.0 s, +1% bytes. veryfast had replaced the presets' fast.
    x264_preset: X264Preset = "superfast"
    browser_args: list[str] = Field(default_factory=list)  # extra Chromium switches (a proxy, host resolver rules)


Capture = Literal["beginframe", "screenshot", "fullpage"]


class RecordResult(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    url: str
    output: Path
    mode: str
    capture: Capture  # how frames were taken: beginframe (headless shell), screenshot (full Chromium), fullpage (fast)
    browser: str  # executable used ("playwright" for Playwright's own)
    frames: int
    fps: int
    seconds: float  # wall time
    capture_fps: float
    page_height: int
    max_scroll: int
    # How deep the recording scrolled (px): the depth asked for, or as deep as a readable speed goes in the time.
    scroll_reached: int = 0
    # Page videos played from an all-keyframe copy (exact mode: each frame's seek decodes one frame; _pagevideo).
    page_videos: int = 0
    warnings: list[str]
    info: MediaInfo

    def summary(self) -> dict[str, Any]:
        return {
            "url": self.url, "output": str(self.output), "mode": self.mode, "capture": self.capture,
            "browser": self.browser, "frames": self.frames, "fps": self.fps,
            "seconds": round(self.seconds, 3), "capture_fps": round(self.capture_fps, 1),
            "page_height": self.page_height, "max_scroll": self.max_scroll, "scroll_reached": self.scroll_reached,
            "page_videos": self.page_videos, "warnings": self.warnings,
            "facts": self.info.summary(),
        }  # fmt: skip


# --- the virtual clock -----------------------------------------------------------------------------------------------

# The element an app-like page scrolls (<html> and <body> fixed to the viewport, `#app { height: 100vh; overflow-y:
# auto }`): the largest that scrolls, at least half the viewport each way; null if none.
_SCROLL_BOX_JS = """() => {
  let box = null, area = 0;
  for (const el of document.querySelectorAll("*")) {
    if (el.scrollHeight <= el.clientHeight + 1 || el.clientHeight < innerHeight / 2 ||
        el.clientWidth < innerWidth / 2) continue;
    if (!/^(auto|scroll|overlay)$/.test(getComputedStyle(el).overflowY)) continue;
    if (el.clientWidth * el.clientHeight > area) [box, area] = [el, el.clientWidth * el.clientHeight];
  }
  return box;
}"""

# The seek bound: how long a frame waits for a page video's seek (and for a frame's clock to answer); a video whose seek
# takes longer is drawn with the picture it has, and named in a warning.
_SEEK_BOUND_S = 1.0
TIME_SHIM = r"""
(() => {
  if (window.__assetprep) return;
  let vt = 0, nextId = 1;
  const epoch = Date.now();
  const timers = new Map(), frames = new Map(), starts = new WeakMap();
  const RealDate = Date;
  function VDate(...a) {
    if (!new.target) return new RealDate(epoch + vt).toString();
    return a.length ? new RealDate(...a) : new RealDate(epoch + vt);
  }
  VDate.prototype = RealDate.prototype;
  VDate.now = () => epoch + vt;
  VDate.parse = RealDate.parse;
  VDate.UTC = RealDate.UTC;
  window.Date = VDate;
  // Intl's formatters take the real "now" when given no date (a live clock: "10:04:31"): the clock's instead.
  const dtf = Intl.DateTimeFormat.prototype, realFormat = Object.getOwnPropertyDescriptor(dtf, "format").get;
  // One format function per formatter, as the real getter gives (f.format === f.format).
  const realParts = dtf.formatToParts, bound = new WeakMap();
  Object.defineProperty(dtf, "format", {configurable: true, get() {
    if (!bound.has(this)) {
      const format = realFormat.call(this);
      bound.set(this, (date) => format(date === undefined ? epoch + vt : date));
    }
    return bound.get(this);
  }});
  dtf.formatToParts = function (date) { return realParts.call(this, date === undefined ? epoch + vt : date); };
  performance.now = () => vt;
  // Seeded Math.random (mulberry32): a page that draws random numbers looks the same in every run.
  const mulberry = (seed) => () => {
    seed = (seed + 0x6D2B79F5) | 0;
    let r = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return (r ^ (r >>> 14)) >>> 0;
  };
  const draw = mulberry(0x2545F491);
  Math.random = () => draw() / 4294967296;
  // crypto's random bytes too (particle effects, generated ids shown on the page: reruns differed), from a
  // generator of their own so Math.random's numbers stay what they were. The real call still checks the array
  // (integer type, at most 65,536 bytes) and throws as it does.
  const bytes = mulberry(0x6A09E667), C = window.Crypto && Crypto.prototype;
  if (C && C.getRandomValues) {
    const realValues = C.getRandomValues;
    C.getRandomValues = function (array) {
      const out = realValues.call(this, array);
      const view = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      for (let i = 0; i < view.length; i++) view[i] = bytes() & 255;
      return out;
    };
    if (C.randomUUID) {  // secure contexts only
      C.randomUUID = function () {
        const b = this.getRandomValues(new Uint8Array(16)), hex = [];
        b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;  // version 4, RFC 4122 variant
        for (const x of b) hex.push(x.toString(16).padStart(2, "0"));
        const h = hex.join("");
        return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
      };
    }
  }
  const add = (fn, delay, args, repeat) => {
    const id = nextId++;
    const d = Math.max(repeat ? 1 : 0, Number(delay) || 0);
    timers.set(id, {fn, at: vt + d, args, every: repeat ? d : 0});
    return id;
  };
  const realTimeout = window.setTimeout.bind(window);
  window.setTimeout = (fn, delay, ...args) => add(fn, delay, args, false);
  window.setInterval = (fn, delay, ...args) => add(fn, delay, args, true);
  window.clearTimeout = window.clearInterval = (id) => timers.delete(id);
  window.requestAnimationFrame = (cb) => { const id = nextId++; frames.set(id, cb); return id; };
  window.cancelAnimationFrame = (id) => frames.delete(id);
  const call = (fn, args) => {
    try { typeof fn === "function" ? fn(...args) : (0, eval)(String(fn)); } catch (e) { console.error(e); }
  };
  // Live lists (~2 us a frame on the bench page; querySelectorAll went through its 3,600 elements: 0.3 ms).
  const smil = ["animate", "animateTransform", "animateMotion", "set"].map(
    (name) => document.getElementsByTagNameNS("http://www.w3.org/2000/svg", name));
  const seek = () => {
    for (const a of document.getAnimations()) {
      // Scroll-driven animations (animation-timeline: scroll() / view(): reading-progress bars, parallax) follow
      // the scroll, which each frame sets: held, they stood where the page was walked for lazy content.
      if (a.timeline && a.timeline !== document.timeline) continue;
      if (!starts.has(a)) starts.set(a, vt);
      try { a.pause(); a.currentTime = vt - starts.get(a); } catch (e) {}
    }
    // SVG's own animations (SMIL: <animate> and kin; spinners, animated logos) run on the timeline of their
    // outermost <svg>, which getAnimations() does not list: it ran in real time, and reruns differed (a bar moving
    // 100 px/s stood 25, 26 and 27 px in). Each such timeline is held and set to the clock, from when it was seen.
    const timelines = new Set();
    for (const list of smil) {
      for (const el of list) {
        let svg = el.ownerSVGElement;
        while (svg && svg.ownerSVGElement) svg = svg.ownerSVGElement;
        if (svg) timelines.add(svg);
      }
    }
    for (const svg of timelines) {
      if (!starts.has(svg)) starts.set(svg, vt);
      try { svg.pauseAnimations(); svg.setCurrentTime((vt - starts.get(svg)) / 1000); } catch (e) {}
    }
  };
  // Media elements follow the clock too, seeked to it each frame (played on their own, a second video ran at
  // 1.7-2.2x and reruns differed from frame 60 on). play() starts driving one from where it is, pause() stops it;
  // an autoplay element starts once its duration is known.
  // driven: element -> [vt at its start, its time then]; held: paused by the clock at least once
  const driven = new Map(), stopped = new WeakSet(), held = new WeakSet();
  const media = HTMLMediaElement.prototype, realPause = media.pause;
  // Media inside web components (a hero <video autoplay> in a custom element's shadow root) is out of reach of
  // document.querySelectorAll: it played on its own, in real time, differently each run. Shadow roots the page
  // makes are kept (closed ones too), and searched with the document; so are the open ones its HTML declares
  // (<template shadowrootmode="open">: server-rendered components), which the parser attaches without a call.
  const shadows = new Set(), realAttach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (...args) {
    const root = realAttach.apply(this, args);
    shadows.add(root);
    return root;
  };
  const declared = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.shadowRoot && !shadows.has(el.shadowRoot)) {
        shadows.add(el.shadowRoot);
        declared(el.shadowRoot);
      }
    }
  };
  document.addEventListener("DOMContentLoaded", () => declared(document));
  const everywhere = (selector) => {
    const found = [...document.querySelectorAll(selector)];
    for (const root of shadows) if (root.host.isConnected) found.push(...root.querySelectorAll(selector));
    return found;
  };
  media.play = function () {
    stopped.delete(this);
    if (!driven.has(this)) driven.set(this, [vt, this.currentTime || 0]);
    realPause.call(this);
    return Promise.resolve();
  };
  media.pause = function () { driven.delete(this); stopped.add(this); realPause.call(this); };
  let seeking = [], pending = null, damageCanvas = null;
  // Set on the document the recorder loaded and got ready (own()): a document the page went on to by itself (a
  // redirect, a reload) is not, and says so to the clock's calls (start(), settled()).
  let ours = false;
  // Sets a media element's time: a promise that ends once it seeked there (within the seek bound). One that took
  // longer (its data comes slowly) is noted: the frame is drawn with the picture the video had, which reruns need
  // not share.
  const lateSeeks = new Set();  // the URLs of videos whose seek ran out of time
  let late = 0;  // seeks that ran out of time since the clock last answered
  const seekMedia = (el, to) => new Promise((done) => {
    let seeked = false;
    el.addEventListener("seeked", () => { seeked = true; done(); }, {once: true});
    realTimeout(() => {
      if (!seeked) {
        late++;
        lateSeeks.add(el.currentSrc || el.src || "a video without a URL");
      }
      done();
    }, @SEEK_MS@);
    el.currentTime = to;
  });
  // Chromium keeps showing the picture a video had when it went out of view, even after a seek, until a frame has
  // been drawn with it back in view and a new picture comes (frame 0 after the page was walked for lazy content
  // showed where the video had stopped; a video scrolled back into view differed between reruns). Such a video is
  // `revived`: the frame is drawn uncaptured, the video seeked away and back (revive()), twice over: after one round
  // the bench page's hero, back in view on frame 116, still showed another picture in ~1 run of 3 (up to 11 code
  // values); after two, 28 of 28 runs were the same.
  const hidden = new WeakSet();
  let revived = [];
  // `at`: the time to show, vt or (ahead) the next frame's, sought while this frame's picture is on its way.
  const drive = (at, ahead) => {
    if (!ahead) {
      for (const el of everywhere("video[autoplay], audio[autoplay]")) {
        if (!driven.has(el) && !stopped.has(el)) driven.set(el, [vt, 0]);
      }
    }
    for (const [el, [t0, from]] of driven) {
      // Paused once even when it is: an autoplay video whose data was still coming would start on its own later,
      // in real time (frame 0 showed it 1 or 2 frames in, run to run); pause() clears the pending autoplay.
      if (!el.paused || !held.has(el)) {
        realPause.call(el);
        held.add(el);
      }
      const d = el.duration;
      if (!isFinite(d) || d <= 0) {  // not loaded yet: starts when it is
        if (!ahead) driven.set(el, [vt, from]);
        continue;
      }
      const t = el.loop ? (from + (at - t0) / 1000) % d : Math.min(from + (at - t0) / 1000, d);
      // A seek decodes from the last keyframe (~35 ms a frame for a hero video): one out of view is not seeked
      // until it is back in view, at the time it has reached by then.
      const r = el.getBoundingClientRect();
      if (r.bottom <= 0 || r.top >= innerHeight || r.right <= 0 || r.left >= innerWidth || !r.width || !r.height) {
        if (!ahead) hidden.add(el);
        continue;
      }
      if (!ahead && hidden.has(el)) {
        hidden.delete(el);
        revived.push([el, t]);
      }
      if (Math.abs(el.currentTime - t) > 1e-4) seeking.push(seekMedia(el, t));
    }
  };
  // What the recording scrolls: the document, or on an app-like page that fixes <html> and <body> to the viewport
  // and scrolls a container of its own (`#app { height: 100vh; overflow-y: auto }`), that container: the largest
  // element that scrolls, at least half the viewport each way. Such a page had been recorded without scrolling
  // ("not taller than the viewport"). Chosen when the page is measured.
  let box = null;
  const scrolled = () => (box ? box.scrollTop : window.scrollY);
  window.__assetprep = {
    now: () => vt,
    // Page height and viewport height (px); a container's height is what it scrolls over plus the viewport's.
    measure() {
      const doc = Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0);
      box = null;
      if (doc > innerHeight + 1) return [doc, innerHeight];
      box = (@SCROLL_BOX@)();
      return box ? [box.scrollHeight - box.clientHeight + innerHeight, innerHeight] : [doc, innerHeight];
    },
    scroll(y) { if (box) box.scrollTop = y; else window.scrollTo(0, y); },
    scrolled,
    // Videos the clock plays above `bottom` (px) that cannot show a frame yet: no data, no error, a source.
    unready: (bottom) => everywhere("video").filter((el) =>
      (driven.has(el) || (el.autoplay && !stopped.has(el))) && el.readyState < 2 && !el.error &&
      el.networkState !== 3 && el.getBoundingClientRect().top + scrolled() <= bottom).length,
    // Before the first frame: the media the clock plays start from it. Each started when its duration became known,
    // at whichever of the preparation's clock steps that fell in: the bench's hero was at 0 s in one run, 2 s in
    // the next. Returns the clock.
    own() { ours = true; },
    owned: () => ours,
    lateVideos: () => [...lateSeeks],
    start() {
      if (!ours) return null;
      for (const [el, [, from]] of driven) {
        driven.set(el, [vt, from]);
        hidden.add(el);  // whether it was in view while the page got ready or not, frame 0 draws it anew
      }
      return vt;
    },
    // After a frame's picture was taken: start the seeks the next frame (at `target`) needs. advance() finds them
    // made and settled() waits for them.
    ahead(target) { drive(target, true); },
    // After advance: a promise that ends when the media seeked to this frame's time (within the seek bound), or
    // nothing.
    // With `limit` (ms) it ends by then anyway, with 1 if the seeks are still going (settled() waits for them).
    // 2 is added when a video came back into view (see `revived`), 4 on a document the recorder did not get ready,
    // 8 when a seek ran out of the seek bound since the last answer.
    settled(limit) {
      if (seeking.length) {
        const all = pending = Promise.all(seeking);
        seeking = [];
        all.then(() => { if (pending === all) pending = null; });
      }
      const flag = (revived.length ? 2 : 0) | (ours ? 0 : 4);
      const told = (f) => {  // an answer with the seeks ended tells of those that ran out of time
        if (f & 1 || !late) return f;
        late = 0;
        return f | 8;
      };
      if (!pending) return told(flag) || undefined;
      const done = pending.then(() => flag);
      if (limit === undefined) return done.then(told);
      return Promise.race([done, new Promise((r) => realTimeout(() => r(1 + flag), limit))]).then(told);
    },
    // Once the frame was drawn with the revived videos in view: each seeked 50 ms away and back, one after the other
    // (each within the seek bound), so the picture at its time comes anew. `last`: the round after which they are done.
    async revive(last) {
      const videos = revived;
      if (last) revived = [];
      for (const [el, t] of videos) {
        for (const to of [t >= 0.05 ? t - 0.05 : t + 0.05, t]) await seekMedia(el, to);
      }
    },
    // Screencast capture: a transparent canvas over the whole viewport, cleared each frame, so every frame's damage
    // is the whole viewport (Chromium's capture scheduler skipped frames whose damage changed shape). Transparent,
    // it changes no pixel.
    damage() {
      if (!damageCanvas) {
        damageCanvas = document.createElement("canvas");
        damageCanvas.width = damageCanvas.height = 1;
        // Inline and !important: a page's own rules (canvas { display: none }) must not hide it.
        damageCanvas.style.cssText = ["position:fixed", "left:0", "top:0", "width:100vw", "height:100vh",
          "display:block", "visibility:visible", "opacity:1", "margin:0", "border:0", "padding:0", "transform:none",
          "pointer-events:none", "z-index:2147483647", "background:transparent"].map((d) => d + "!important").join(";");
      }
      if (!damageCanvas.isConnected) document.documentElement.appendChild(damageCanvas);  // a page may rewrite <html>
      damageCanvas.getContext("2d").clearRect(0, 0, 1, 1);
    },
    advance(target) {
      if (!ours) return;  // a document the page went on to: its timers wait for a take of its own
      for (let guard = 0; guard < 100000; guard++) {
        let next = null;
        for (const [id, t] of timers) if (t.at <= target && (!next || t.at < next[1].at)) next = [id, t];
        if (!next) break;
        const [id, t] = next;
        vt = Math.max(vt, t.at);
        if (t.every) t.at += t.every; else timers.delete(id);
        call(t.fn, t.args || []);
      }
      vt = target;
      const due = [...frames.values()];
      frames.clear();
      for (const cb of due) call(cb, [vt]);
      seek();
      drive(vt, false);
      tickFrames(target);
    },
  };
  document.addEventListener("DOMContentLoaded", seek);
  // Frames in the page (iframes: embedded players, maps, forms, review widgets, mostly of other origins) have clocks
  // of their own, which nothing moved: their timers and animation frames never ran (a widget that shows itself
  // after a timeout stayed blank, its animations stood still). Each frame's clock follows its parent's over a
  // channel of their own (the pages' own message listeners see nothing of it): the parent's advance() moves its
  // frames' clocks, and settled() waits until they have moved (within the seek bound). A frame's clock starts at 0
  // when time first reaches it, as its performance.now() starts at its own load in a visitor's browser.
  const inner = new Map();  // a frame's window -> [port, ticks sent]
  addEventListener("message", (e) => {
    if (!e.data || e.data.__assetprep !== "frame" || !e.ports[0] || !e.source) return;
    e.stopImmediatePropagation();
    inner.set(e.source, [e.ports[0], 0]);  // a frame that loads another document sends a new port
  }, true);
  const tickFrames = (target) => {
    for (const [win, entry] of inner) {
      if (win.closed) {  // its iframe was removed
        inner.delete(win);
        continue;
      }
      const [port] = entry, n = ++entry[1];
      seeking.push(new Promise((done) => {
        // The frame's answer names its videos whose seeks ran out of time (and its own frames'): they are the
        // page's late videos too.
        port.onmessage = (e) => {
          const [m, urls] = e.data;
          if (urls) {
            late++;
            for (const url of urls) lateSeeks.add(url);
          }
          if (m === n) done();
        };
        realTimeout(done, @SEEK_MS@);
        port.postMessage([n, target]);
      }));
    }
  };
  if (window.parent !== window) {
    const {port1, port2} = new MessageChannel();
    let base = null;
    port1.onmessage = (e) => {
      const [n, target] = e.data;
      if (base === null) base = target - vt;
      ours = true;  // its parent is recorded
      window.__assetprep.advance(target - base);
      Promise.resolve(window.__assetprep.settled()).then((f) => port1.postMessage([n, f & 8 ? [...lateSeeks] : null]));
    };
    try { window.parent.postMessage({__assetprep: "frame"}, "*", [port2]); } catch (e) {}
  }
})();
""".replace("@SCROLL_BOX@", _SCROLL_BOX_JS).replace("@SEEK_MS@", str(round(_SEEK_BOUND_S * 1000)))

# Sent as a raw CDP Runtime.evaluate (numbers only): ~1.3 ms a frame instead of ~2 ms through page.evaluate.
_FRAME_JS = "window.__assetprep.scroll({y}); window.__assetprep.advance({t:.4f}); window.__assetprep.settled({limit})"
# Over the recorder's own connection the clock's call waits at most this long (ms) for the frame's video seeks: a
# seek may wait for a byte range of a page video's copy, which only Playwright answers, and only while it is called.
_DIRECT_SEEK_MS = 50
_AHEAD_JS = "window.__assetprep.ahead({t:.4f})"
# Seconds until the page's finite animations and transitions end. Exact mode's clock holds them paused at virtual
# time, so "paused" counts as playing here.
_INTRO_JS = """() => Math.max(0, ...document.getAnimations().map(a => {
  if (a.timeline && a.timeline !== document.timeline) return 0;  // scroll-driven: no time to wait for
  const t = a.effect && a.effect.getComputedTiming();
  if (!t || !isFinite(t.endTime) || a.playState === "finished" || a.playState === "idle") return 0;
  return (t.endTime - (t.localTime || 0)) / 1000;
}))"""
# Content the scroll will show, loaded before the first frame: lazy images (loading=lazy, IntersectionObserver
# scripts) load when they near the viewport, so the page is walked through once; then images and fonts are waited
# for (`complete` is true for a broken image too: a 404 is not waited for).
_LOADED_JS = """(bottom) => document.fonts.status === "loaded" && [...document.images].every(img =>
  img.getBoundingClientRect().top + (window.__assetprep ? window.__assetprep.scrolled() : window.scrollY) > bottom ||
  img.complete)"""
# Exact mode may scroll a container (TIME_SHIM's measure()); fast mode's full-page shot shows the document only,
# and says whether a document no taller than the viewport scrolls a container instead (1).
_MEASURE_JS = f"""() => {{
  if (window.__assetprep) return window.__assetprep.measure();
  const doc = Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0);
  return [doc, innerHeight, doc <= innerHeight + 1 && ({_SCROLL_BOX_JS})() ? 1 : 0];
}}"""


# --- scroll plans ----------------------------------------------------------------------------------------------------


# Readable motion: a visitor reads the first screen, scrolls at most about a screen a second, and the clip (which
# Tavus loops) ends at rest. Before: scrolling began on frame 1, and `human --scroll-depth bottom` moved up to 3.5
# screens in 0.37 s.
HOLD_SECONDS = 1.0  # the first screen at rest, longer while its intro animations play (up to INTRO_MAX_SECONDS)
INTRO_MAX_SECONDS = 3.0
REST_SECONDS = 0.5  # at the end, at rest
SMOOTH_SCREENS_PER_SECOND = 1.0
HUMAN_STEP_SCREENS = 0.75  # the most a human step moves
HUMAN_SCREENS_PER_SECOND = 1.5  # while it moves
HUMAN_PAUSE_SECONDS = 0.6  # reading between steps
RETURN_SCREENS_PER_SECOND = 2.0


def scroll_target(options: RecordOptions, max_scroll: int) -> int:
    """The depth asked for, in px: middle, bottom or a number, within the page."""
    depth = options.scroll_depth
    return max_scroll // 2 if depth == "middle" else max_scroll if depth == "bottom" else min(int(depth), max_scroll)


def scroll_keyframes(options: RecordOptions, max_scroll: int, last: float | None = None, *, view_h: int = 720,
                     intro: float = 0.0) -> list[tuple[float, float]]:  # fmt: skip
    """(seconds, y) points of the scroll path; y is linear between them. Mirrors Tavus's scroll properties, at a
    readable speed: the first screen holds (HOLD_SECONDS, or while the page's intro animations play: `intro`,
    bounded), moves are capped in screens per second, and the path ends at rest. The depth asked for is reached when
    the time allows; the path's deepest point says how deep it went.

    `last` is the time of the last frame (duration - 1/fps): a return trip ends REST_SECONDS before it.
    """
    T = last if last is not None else options.duration
    if options.keyframes:
        return sorted((t, min(max(0.0, y), float(max_scroll))) for t, y in options.keyframes)
    if options.scroll == "none" or max_scroll <= 0 or T <= 0:
        return [(0.0, 0.0)]
    target = scroll_target(options, max_scroll)
    back = options.scroll_return == "return"
    hold = round(min(max(HOLD_SECONDS, min(intro, INTRO_MAX_SECONDS)), T * 0.25), 3)
    rest = min(REST_SECONDS, T * 0.1)
    down_end = T * (0.45 if back else 0.85)
    if not back:
        down_end = min(down_end, T - rest)
    avail = max(0.0, down_end - hold)
    screen = float(max(1, view_h))
    points = [(0.0, 0.0), (hold, 0.0)]
    if options.scroll == "smooth":
        reach = float(min(target, math.floor(SMOOTH_SCREENS_PER_SECOND * screen * avail)))
        points.append((down_end, reach))
    else:  # human: steps of most of a screen with reading pauses between them
        steps = max(1, math.ceil(target / (HUMAN_STEP_SCREENS * screen)))
        step = target / steps
        move = step / (HUMAN_SCREENS_PER_SECOND * screen)
        fit = math.floor((avail + HUMAN_PAUSE_SECONDS) / (move + HUMAN_PAUSE_SECONDS))
        if fit < 1:  # not even one step fits: part of one
            steps, step, move = 1, HUMAN_SCREENS_PER_SECOND * screen * avail, avail
        elif fit < steps:
            steps = fit
        slot = avail / steps  # spread over the time there is, as before: slower is more readable
        move = min(slot, max(move, slot * 0.55))
        for i in range(1, steps + 1):
            start = hold + slot * (i - 1)
            points += [(start + move, step * i), (start + slot, step * i)]
    reach = points[-1][1]
    if back and reach > 0:
        end = T - rest
        took = max(reach / (RETURN_SCREENS_PER_SECOND * screen), end - T * 0.55)
        points += [(max(points[-1][0], end - took), reach), (end, 0.0)]
    return points


def scroll_at(points: list[tuple[float, float]], t: float) -> float:
    if t <= points[0][0]:
        return points[0][1]
    for (t0, y0), (t1, y1) in itertools.pairwise(points):
        if t <= t1:
            return y0 if t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def _ffmpeg_expr(points: list[tuple[float, float]], fps: int) -> str:
    """The same path as an ffmpeg expression of the frame number n (for fast mode's crop), rounded as exact mode."""
    t = f"(n/{fps})"
    expr = f"{points[-1][1]:.3f}"
    for (t0, y0), (t1, y1) in reversed(list(itertools.pairwise(points))):
        seg = f"{y0:.6f}" if t1 == t0 else f"({y0:.6f}+({y1 - y0:.6f})*({t}-{t0:.9f})/{t1 - t0:.9f})"
        expr = f"if(lt({t},{t1:.9f}),{seg},{expr})"  # ffmpeg-python escapes the commas
    return f"round({expr})"


# --- browser, local pages, network guard -----------------------------------------------------------------------------

_OS_CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "/usr/lib/chromium/chromium")
_OS_HEADLESS_SHELL = ("chromium-headless-shell", "/usr/lib/chromium/chromium-headless-shell")
# The headless shell's switch for frame-by-frame control (begin-frame control, all compositor stages before draw,
# no threaded animation/scrolling, images decoded before drawing). Other Chromium builds ignore it.
_DETERMINISTIC = "--deterministic-mode"


def _process_tree(marker: str) -> list[int]:
    """PIDs of the browser launched with `marker` among its switches, and of all its descendants (zygote, renderers)."""
    parents: dict[int, int] = {}
    roots = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            line = (entry / "stat").read_text()
            parents[int(entry.name)] = int(line.rsplit(")", 1)[1].split()[1])
            if marker.encode() in (entry / "cmdline").read_bytes():
                roots.append(int(entry.name))
    found, todo = set(roots), list(roots)
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def _user_data_dir(pid: int | str) -> bytes | None:
    """The --user-data-dir a process was started with (None: none, or the process is gone)."""
    with contextlib.suppress(OSError):
        for arg in (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0"):
            if arg.startswith(b"--user-data-dir="):
                return arg.split(b"=", 1)[1]
    return None


def _profile_dir(marker: str) -> Path | None:
    """The temporary profile folder Playwright gave the browser launched with `marker` (None when it is gone)."""
    for pid in _process_tree(marker):
        if (found := _user_data_dir(pid)) is not None:
            path = Path(os.fsdecode(found))
            return path if path.name.startswith(_PROFILE_PREFIX) else None
    return None


_PROFILE_PREFIX = "playwright_chromiumdev_profile-"
STALE_PROFILE_S = 600.0


def sweep_stale_profiles(folder: Path | None = None, *, older_than: float = STALE_PROFILE_S) -> list[Path]:
    """Remove the Playwright browser profiles in `folder` (the temp folder) that no running process uses and that
    were last touched over `older_than` seconds ago: those of recordings whose own process was killed (kill -9,
    OOM), which no `finally` could remove (224 KB each; one per killed recording). Headless Chromium leaves no
    SingletonLock to ask, so a profile is in use while some process's command line names it; a fresh one may be a
    launch still starting. Linux only (/proc); elsewhere nothing is removed."""
    folder = folder or Path(tempfile.gettempdir())
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    now = time.time()
    candidates = []
    for p in folder.glob(_PROFILE_PREFIX + "*"):
        with contextlib.suppress(OSError):  # another recording may remove its own profile meanwhile
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode) and now - st.st_mtime > older_than:
                candidates.append(p)
    if not candidates:
        return []
    in_use = {_user_data_dir(entry.name) for entry in proc.iterdir() if entry.name.isdigit()}
    removed = []
    for path in candidates:
        if os.fsencode(path) not in in_use:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class _Watchdog:
    """A bound on every browser call.

    Playwright's evaluate and CDP calls have no timeout, and a page whose script never yields (an endless loop)
    blocks them forever; the recorder's own deadline is only looked at between frames. A step that overruns gets
    the browser's processes killed, which makes the blocked call fail, and is reported as what it was doing.
    """

    def __init__(self, marker: str, url: str) -> None:
        self.marker, self.url = marker, url
        self.fired: str | None = None
        self._step: tuple[str, float, float] | None = None  # (where, budget s, expiry on the monotonic clock)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="assetprep-browser-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)

    @contextlib.contextmanager
    def step(self, where: str, seconds: float) -> Iterator[None]:
        self._step = (where, seconds, time.monotonic() + seconds)
        try:
            yield
        except Exception:
            if self.fired:
                raise RecordError(self.fired, hint="its script never ends (an endless loop?): fix the page, "
                                  "record another one, or raise --timeout if it is only slow") from None  # fmt: skip
            raise
        finally:
            self._step = None

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            step = self._step
            if step is not None and time.monotonic() > step[2] and not self.fired:
                self.fired = f"{self.url}: the page's script did not yield for {step[1]:g} s {step[0]}"
                for pid in _process_tree(self.marker):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)


def find_chromium(playwright: Any) -> str | None:
    """None: Playwright's own browser is installed. Else the path of the OS Chromium (CHROMIUM env wins).

    The OS chromium-headless-shell comes first: it starts faster and exact recording can drive it frame by frame
    (Playwright's own install already launches its headless shell in headless mode).
    """
    override = os.environ.get("CHROMIUM")
    if override:
        return _process.find_tool("chromium")
    with contextlib.suppress(Exception):
        if Path(playwright.chromium.executable_path).exists():
            return None
    for name in _OS_HEADLESS_SHELL + _OS_CHROMIUM:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    raise ToolMissingError(
        "no Chromium found (Playwright's browser is not installed and there is no OS chromium)",
        hint="install it: apt-get install -y chromium chromium-headless-shell (or set CHROMIUM=/path/to/chrome)",
    )


@contextlib.contextmanager
def serve_local(path: Path) -> Iterator[str]:
    """Serve a local .html file or folder on 127.0.0.1 for the duration; yields the page URL.

    The page's folder may hold more than the page (a home folder, a project with .env): only web assets are
    served (by extension), never dotfiles or dot-folders, never a directory listing. Root-relative links
    (`/css/site.css`) keep working: the folder is the server's root.
    """
    folder, page = (path, "") if path.is_dir() else (path.parent, path.name)
    handler = functools.partial(_PageHandler, directory=str(folder))
    with ThreadedServer(QuietHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"http://127.0.0.1:{server.server_port}/{quote(page)}"


_WEB_ASSETS = {
    ".html", ".htm", ".xhtml", ".css", ".js", ".mjs", ".json", ".map", ".wasm", ".svg", ".png", ".jpg", ".jpeg",
    ".gif", ".webp", ".avif", ".ico", ".bmp", ".woff", ".woff2", ".ttf", ".otf", ".mp4", ".webm", ".ogg", ".mp3",
    ".wav", ".m4a", ".vtt", ".txt", ".xml", ".csv",
}  # fmt: skip


def is_served(parts: list[str], suffix: str) -> bool:
    """Whether serve_local serves a file at this path in the page's folder (its parts) with this suffix."""
    return not any(p.startswith(".") for p in parts) and suffix.lower() in _WEB_ASSETS


class _Slice:
    """The first `left` bytes of a file from where it stands, as a readable file (for copyfileobj)."""

    def __init__(self, f: Any, left: int) -> None:
        self.f, self.left = f, left

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    def send_head(self) -> Any:
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        target = Path(self.translate_path(self.path))
        if target.is_dir():
            target = target / "index.html"
        if not is_served(parts, target.suffix):
            self.send_error(404, "Not Found")
            return None
        # Byte ranges, as web servers answer them: without, Chromium cannot seek a page's <video> (seekable is
        # empty), which the recording's clock does every frame.
        size = target.stat().st_size if target.is_file() else None
        if size is None or (asked := byte_range(self.headers.get("Range"), size)) is None:
            return super().send_head()
        first, last = asked
        if first > last:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f = open(target, "rb")  # noqa: SIM115 - SimpleHTTPRequestHandler copies from it and closes it
        f.seek(first)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(target)))
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Slice(f, last - first + 1)

    def end_headers(self) -> None:
        if self.command in ("GET", "HEAD") and not any(b"Accept-Ranges" in h for h in self._headers_buffer):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def list_directory(self, path: Any) -> Any:
        self.send_error(404, "Not Found")  # no listings: a folder without index.html shows nothing
        return None

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- recording -------------------------------------------------------------------------------------------------------


_NET_ERRORS = {  # Chromium's codes in words
    "ERR_NAME_NOT_RESOLVED": "host name not found (DNS)",
    "ERR_CONNECTION_REFUSED": "connection refused (nothing listens there)",
    "ERR_CONNECTION_TIMED_OUT": "connection timed out",
    "ERR_CONNECTION_RESET": "connection reset",
    "ERR_CONNECTION_CLOSED": "connection closed without an answer",
    "ERR_EMPTY_RESPONSE": "connection closed without an answer",
    "ERR_CERT_": "TLS certificate rejected",
    "Download is starting": "it answers with a file to download (a PDF, a zip), not a web page",
    "ERR_TOO_MANY_REDIRECTS": "it redirects in a loop",
    # A 204/205 answer (nothing to show) or a load the site cancelled itself.
    "ERR_ABORTED": "it answered with no page to show (such as HTTP 204 No Content)",
    "ms exceeded": "no page came within the timeout",
}


# A site that is down, restarting or overloaded: it refuses or drops connections or says so (429, 502-504). Worth a
# later try. Not: a timeout (a hung site holds a recording slot for the whole timeout again), DNS (a typo, mostly),
# TLS, other HTTP errors. Behind the private-network guard (a proxy) a refused connection is the proxy's 502, or for
# https a failed tunnel; a name the guard cannot resolve looks the same, and is told apart by the guard's list.
_DOWN_CODES = ("ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET", "ERR_CONNECTION_CLOSED", "ERR_EMPTY_RESPONSE",
               "ERR_ADDRESS_UNREACHABLE", "ERR_NETWORK_CHANGED", "ERR_INTERNET_DISCONNECTED",
               "ERR_TUNNEL_CONNECTION_FAILED")  # fmt: skip
_DOWN_STATUSES = frozenset({429, 502, 503, 504})


def _site_down(exc: Exception) -> bool:
    return any(code in str(exc) for code in _DOWN_CODES)


def _clean_page_error(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = text.replace("Page.goto: ", "").strip()
    words = next((w for code, w in _NET_ERRORS.items() if code in text), None)
    return f"{words} [{text.split(' at ')[0]}]" if words else text


# The banners of the common consent managers (OneTrust, Cookiebot, Usercentrics, Quantcast, TrustArc, Didomi,
# Osano, CookieYes, Complianz, iubenda, Borlabs, HubSpot, Shopify, Axeptio, Sourcepoint, Termly, Google's Funding
# Choices, CookieConsent v2/v3, consentmanager, CookieFirst, tarteaucitron, Klaro, Civic, Cookie Information,
# CookieHub, Piwik PRO, Ketch, WordPress plugins) and the scroll locks some put on the page. A lead's website is
# mostly seen through one of them otherwise; hidden, not answered: nothing is consented to.
_CONSENT_CSS = """
#onetrust-consent-sdk, #onetrust-banner-sdk, #CybotCookiebotDialog, #CybotCookiebotDialogBodyUnderlay,
#usercentrics-root, #usercentrics-cmp-ui, #qc-cmp2-container, .qc-cmp2-container, #truste-consent-track,
.truste_overlay, .truste_box_overlay, #didomi-host, .osano-cm-window, .osano-cm-dialog, .cky-consent-container,
.cky-overlay, #cmplz-cookiebanner-container, .cmplz-cookiebanner, #iubenda-cs-banner, #BorlabsCookieBox,
#hs-eu-cookie-confirmation, #shopify-pc__banner, #axeptio_overlay, div[id^="sp_message_container"],
#termly-code-snippet-support, .fc-consent-root, #cookie-law-info-bar, .cli-modal-backdrop, #cookie-notice,
#moove_gdpr_cookie_info_bar, #cookiescript_injected, .cc-window.cc-banner, .cc-window.cc-floating,
#cookie-banner, #cookieBanner, .cookie-banner, #cookie-consent, #cookieConsent, #cc-main, #cc--main, #cc_div,
#cmpbox, #cmpbox2, .cookiefirst-root, #tarteaucitronRoot, .klaro .cookie-notice, .klaro .cookie-modal, #ccc,
#coiOverlay, .ch2, #ppms_cm_popup_overlay, #lanyard_root, #consent_blackbar, #gdpr-cookie-consent-bar,
#cookie-law-info-again { display: none !important; }
html.sp-message-open, body.didomi-popup-open, body.cli-barmodal-open, html.disable--interaction,
html.show--consent.disable--interaction { overflow: auto !important; }
"""


def _page_css(options: RecordOptions) -> str:
    css = "html, body { scroll-behavior: auto !important; } ::-webkit-scrollbar { display: none; }\n"
    if not options.show_cookie_banners:
        css += _CONSENT_CSS
    if options.hide:
        css += ", ".join(options.hide) + " { display: none !important; }\n"
    return css + (options.css or "")


def _read_text_option(value: str | None) -> str | None:
    """--css/--js take a file path or inline text."""
    if value and len(value) < 4096 and "\n" not in value and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


def record(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: RecordOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
) -> RecordResult:
    """Record a page into an H.264 .mp4 meeting `options.preset`; checked and written atomically."""
    options = options or RecordOptions()
    text = os.fspath(source)
    path = Path(text)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", text)
    if scheme and scheme.group(1).lower() in ("http", "https"):
        return _record_url(scheme.group(1).lower() + text[scheme.end(1) :], output, options, on_progress)
    if scheme and not path.exists():  # ftp:, file:, javascript:, data: … are not read as file names
        raise RecordError(f"cannot record {text!r}: only http(s) URLs, .html files and folders are recorded",
                          hint="give an http(s) URL, or the path of a .html file or a folder")  # fmt: skip
    if not path.exists():
        raise RecordError(f"no such page or folder: {path}", hint="give an http(s) URL, a .html file or a folder")
    if path.is_file() and path.suffix.lower() not in (".html", ".htm", ".xhtml", ".svg"):
        raise RecordError(f"{path} is not a web page (.html)", hint="give an http(s) URL, a .html file or a folder")
    if path.is_dir() and not (path / "index.html").exists():
        raise RecordError(f"folder {path} has no index.html", hint="name the page file instead")
    page = path / "index.html" if path.is_dir() else path
    check_output_path(output, inputs=(page,), suffixes=MP4_SUFFIXES)  # before a local server or a browser starts
    with serve_local(path) as url:
        return _record_url(url, output, options, on_progress, trusted=url, inputs=(page,))


_MAX_HOPS = 3  # pages a recording follows a page to (see _record_url)


def _record_url(
    url: str, output: str | os.PathLike[str], options: RecordOptions, on_progress: ProgressCallback | None,
    trusted: str | None = None, inputs: tuple[Path, ...] = (),
) -> RecordResult:  # fmt: skip
    # A page that goes on to another by itself (a splash page's timed redirect, a meta refresh, a language
    # redirect after load) was recorded half unprepared or failed ("the virtual clock failed at frame 31"): the
    # recording is made again of where it went, which a visitor ends up on, with a warning. A few hops at most.
    seen, said = [url], []
    while True:
        try:
            try:
                result = _record_page(url, output, options, on_progress, trusted, inputs)
            except FrameLostError as exc:  # a skipped picture must not cost the lead's recording
                log.warning("%s: %s; recording again with a screenshot per frame", redact_url(url), exc)
                result = _record_page(url, output, options, on_progress, trusted, inputs, screencast=False)
        except PageNavigatedError as exc:
            when = "while it loaded" if exc.seconds is None else f"{exc.seconds:.1f} s in"
            web = exc.url.lower().startswith(("http://", "https://"))
            # about:blank as it is; a data: or blob: URL by its scheme (its text may be long, or a secret)
            where = (redact_url(exc.url) if web else exc.url if exc.url.startswith("about:")
                     else f"a {exc.url.split(':')[0]}: URL")  # fmt: skip
            went = f"{redact_url(seen[-1])} went on to {where} by itself {when}"
            if not web:
                raise RecordError(f"{went}, which is not a web address",
                                  hint="give the URL of the page to record") from None  # fmt: skip
            if exc.url in seen or len(seen) > _MAX_HOPS:  # (a reload is _went_on's error)
                raise RecordError(f"{redact_url(seen[0])} keeps going on to other pages while it is recorded "
                                  f"({went})", hint="give the URL of the page it settles on") from None  # fmt: skip
            said.append(f"{went} (a redirect or refresh): recorded that page")
            seen.append(exc.url)
            url = exc.url
            continue
        except RecordError as exc:
            if len(seen) == 1 or type(exc) is not RecordError:  # a kind of its own (a clip URL) stays what it is
                raise
            # Where it failed is a page the user never named ("blocked request to a private address (10.1.2.3)").
            raise RecordError(f"{exc.message} ({redact_url(seen[0])} went on to it by itself)", hint=exc.hint,
                              transient=exc.transient) from None  # fmt: skip
        result.warnings[:0] = said
        return result


def _record_page(
    url: str, output: str | os.PathLike[str], options: RecordOptions, on_progress: ProgressCallback | None,
    trusted: str | None = None, inputs: tuple[Path, ...] = (), *, screencast: bool = True,
) -> RecordResult:  # fmt: skip
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    preset = load_video_preset(options.preset)
    if options.fps:
        preset = preset.model_copy(update={"fps": options.fps})
    fps = preset.fps
    frames = max(1, round(options.duration * fps))
    vw, vh = options.viewport or (round(preset.width / options.scale), round(preset.height / options.scale))
    css = _page_css(options.model_copy(update={"css": _read_text_option(options.css)}))
    js = _read_text_option(options.js)
    warnings: list[str] = []
    timeout_ms = options.timeout * 1000
    deadline = time.monotonic() + options.timeout + options.duration * 20 + 60

    with atomic_output(output, inputs=inputs, suffixes=MP4_SUFFIXES) as tmp, contextlib.ExitStack() as stack:
        proxy, blocked, unresolved, guard_args = None, [], set(), []
        missing: list[str] = []  # subresources that failed: a font, a script, an image the page lacks
        videos: IntraVideos | None = None
        if options.block_private_networks:
            # WebRTC sends UDP (STUN/TURN, host candidates) around any HTTP proxy: Chromium's policy for
            # "no UDP that is not proxied" leaves WebRTC nothing but the proxy, i.e. nothing.
            guard_args = ["--force-webrtc-ip-handling-policy=disable_non_proxied_udp"]
            # Every request of the browser, loopback included, goes through the guard; our own local page server
            # (a .html file or folder being recorded) is the one private address it lets through.
            own = urlsplit(trusted) if trusted else None
            guard = stack.enter_context(guard_proxy({(own.hostname or "", own.port or 80)} if own else set()))
            proxy, blocked, unresolved = (
                {"server": f"http://127.0.0.1:{guard.server_address[1]}", "bypass": "<-loopback>"},
                guard.blocked, guard.unresolved,
            )  # fmt: skip
        pw = stack.enter_context(sync_playwright())
        exact = options.mode == "exact"
        executable = find_chromium(pw)
        sweep_stale_profiles()
        # A switch Chromium ignores, so the watchdog can find this browser's processes (and only them).
        marker = f"--assetprep-recording={uuid.uuid4().hex}"
        dog = _Watchdog(marker, url)
        stack.callback(dog.close)
        bound = options.timeout  # per browser step (loading and waiting also have Playwright's timeout inside)
        # AutomationControlled off: navigator.webdriver is false, as in a visitor's browser (consent managers and
        # bot checks behaved otherwise for a browser that announced itself as automated).
        args = [
            *([_DETERMINISTIC, "--remote-debugging-port=0"] if exact else []),  # the frame loop's own connection
            *guard_args,
            "--disable-blink-features=AutomationControlled",
            *options.browser_args,
            marker,
        ]
        try:
            # Playwright turns Chromium's popup blocker off; a visitor's browser has it on.
            browser = pw.chromium.launch(executable_path=executable, headless=True, proxy=proxy, args=args,
                                         chromium_sandbox=os.geteuid() != 0, timeout=30000,
                                         ignore_default_args=["--disable-popup-blocking"])  # fmt: skip
        except PlaywrightError as exc:
            raise RecordError(
                f"Chromium did not start: {_clean_page_error(exc)}", hint="check the chromium install"
            ) from None
        # Playwright removes the browser's temporary profile only when Chromium exits on its own: one the watchdog
        # or a cancel killed left a 224 KB folder in /tmp each time (a day of hung lead sites: thousands of them).
        profile = _profile_dir(marker)  # now, while the process that names it runs

        def close_browser() -> None:
            """Bounded (a browser that does not close is killed) and never an error: the frames are taken. Called
            once every picture is taken too, so Chromium exits while ffmpeg encodes; it had exited after ffmpeg:
            ~0.1 s more, and its CPU during a fast recording's encode."""
            with dog.step("while closing", 10):
                try:
                    browser.close()
                except PlaywrightError as exc:
                    log.debug("browser closed with an error: %s", exc)

        try:
            with dog.step("while starting", 35):
                agent = next((v for k, v in options.headers.items() if k.lower() == "user-agent"), None)
                agent = agent or _visitor_agent(browser)
                context = browser.new_context(
                    viewport={"width": vw, "height": vh}, device_scale_factor=options.scale, user_agent=agent,
                    color_scheme="dark" if options.dark else "light", extra_http_headers=options.headers or None,
                )  # fmt: skip
            if options.cookies:
                context.add_cookies([{"url": url, **c} if "domain" not in c else c for c in options.cookies])
            if exact:
                context.add_init_script(TIME_SHIM)
                # Fetched the browser's way, which a proxy or resolver rules of the caller's would change.
                if not any(a.startswith(("--proxy", "--host-resolver-rules")) for a in options.browser_args):
                    videos = stack.enter_context(intra_videos(
                        proxy=proxy["server"] if proxy else None, fps=fps, budget=min(30.0, options.timeout / 2),
                        size=(round(vw * options.scale), round(vh * options.scale)), recording=options.duration,
                    ))  # fmt: skip
                    context.route(VIDEO_URL, videos.handle)
            # A page that opens windows on load (400 window.open calls made loading time out; 50 made the recording
            # 4x slower) gets none, as a visitor's popup blocker would do; whatever opens anyway is closed.
            context.add_init_script(_NO_POPUPS)
            page = context.new_page()
            context.on("page", lambda other: other.close() if other is not page else None)
            cdp = context.new_cdp_session(page)
            page.set_default_timeout(timeout_ms)
            page.on("dialog", lambda d: d.dismiss())  # alert/confirm must not stall the recording

            def on_response(r: Any) -> None:
                if (
                    r.status >= 400
                    and r.request.resource_type != "document"
                    and not r.headers.get(BLOCKED_HEADER.lower())
                ):
                    missing.append(f"{redact_url(r.url)} (HTTP {r.status})")

            def on_failed(r: Any) -> None:
                # Aborted: cancelled by the page itself (media ranges, preloads) or by the end of the recording. A
                # host the guard refused is said as blocked.
                why = r.failure or "failed"
                if r.resource_type == "document" or "ERR_ABORTED" in why:
                    return
                if any(urlsplit(r.url).hostname == urlsplit(b).hostname for b in blocked):
                    return
                missing.append(f"{redact_url(r.url)} ({next((w for c, w in _NET_ERRORS.items() if c in why), why)})")

            page.on("response", on_response)
            page.on("requestfailed", on_failed)
            failure: PlaywrightError | None = None
            loading = time.monotonic()
            try:
                with dog.step("while loading", bound + 5):
                    response = page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
            except PlaywrightError as exc:
                response, failure = None, exc
            if failure is None:
                # The load event waits for every image and script: one that never ends (a hung tracker, a slow
                # CDN) failed the whole recording of a page that a visitor sees. Record it as it is by then.
                left = max(1.0, options.timeout - (time.monotonic() - loading))
                try:
                    with dog.step("while loading", left + 5):
                        page.wait_for_load_state("load", timeout=left * 1000)
                except PlaywrightTimeoutError:
                    warnings.append(f"the page did not finish loading within {options.timeout:g} s (a resource "
                                    "that never ends: a tracker, a slow image); recorded as it was then")  # fmt: skip
            # The guard refused the page itself: an https CONNECT fails the navigation, plain http gets its 403.
            if blocked and (failure or (response and response.headers.get(BLOCKED_HEADER.lower()))):
                raise RecordError(f"{url}: blocked request to a private address ({blocked[0]})",
                                  hint="--block-private-networks is on")  # fmt: skip
            # A name the guard could not resolve is its 502 or a failed tunnel, which alone reads as a site that is
            # down (tried again for 80 s): it is a lapsed domain or a typo, said as Chromium says it unguarded.
            if (host := urlsplit(url).hostname) in unresolved and (failure or (response and response.status == 502)):
                raise RecordError(f"cannot load {url}: host name not found (DNS): {host}",
                                  hint="check the website's spelling; its domain may have lapsed")  # fmt: skip
            if failure is not None:
                raise RecordError(f"cannot load {url}: {_clean_page_error(failure)}",
                                  hint="check the URL and that the site is reachable",
                                  transient=_site_down(failure))  # fmt: skip
            if response is not None and response.headers.get("cf-mitigated") == "challenge":
                raise RecordError(f"{url} answered with a bot check (a Cloudflare challenge), not the page",
                                  hint="this site keeps automated browsers out: give a clip of it")  # fmt: skip
            if response is not None and response.status >= 400 and not options.allow_http_errors:
                down = response.status in _DOWN_STATUSES
                raise RecordError(f"{url} answered HTTP {response.status}", transient=down,
                                  hint="the site is down or overloaded: try again later" if down
                                  else "fix the URL or pass --allow-http-errors")  # fmt: skip
            # A clip or picture URL opens Chromium's media viewer: recorded, it is the first frame, small, on black.
            ctype = (response.headers.get("content-type") or "").split(";")[0].strip().lower() if response else ""
            media = ctype.split("/")[0]
            if media in ("video", "audio") or (media == "image" and "svg" not in ctype):
                raise NotAPageError(
                    f"{url} is {'an' if media != 'video' else 'a'} {media} file ({ctype}), not a web page",
                    media=media, hint="publish and batch take a clip or picture URL as the background itself",
                )  # fmt: skip
            # A page that goes on by itself while it is made ready fails a call here ("Execution context was
            # destroyed"): _record_url records where it went.
            with _following(page, dog, page.url, None, bound) if exact else contextlib.nullcontext():
                with dog.step("while getting ready", bound + options.timeout):
                    if exact:  # the document made ready from here on (see _went_on)
                        page.evaluate("() => window.__assetprep && window.__assetprep.own()")
                    _wait_ready(page, options, timeout_ms, url)
                    page.add_style_tag(content=css)
                    if js:
                        page.evaluate(f"() => {{ {js}\n}}")
                    page_height, view_h, *boxed = (int(v) for v in page.evaluate(_MEASURE_JS))
                # Fast mode pans one screenshot, which Chromium cannot make taller than _MAX_FULLPAGE device pixels.
                depth = _MAX_DEPTH if exact else int(_MAX_FULLPAGE / options.scale) - view_h
                max_scroll = max(0, min(page_height - view_h, depth))
                if page_height - view_h > depth and options.scroll != "none":
                    warnings.append(f"the page is {page_height} px tall (infinite scroll?): "
                                    f"scrolling stops at {depth} px")  # fmt: skip
                if options.scroll != "none" and max_scroll == 0:
                    warnings.append(
                        "the page scrolls inside an element of its own, not the window, which fast mode cannot pan: "
                        "recorded without scrolling; --mode exact scrolls it" if any(boxed)
                        else "the page is not taller than the viewport: recorded without scrolling"
                    )  # fmt: skip
                last = (frames - 1) / fps
                capture: Capture = _frame_control(cdp, dog, bound) if exact else "fullpage"
                points = scroll_keyframes(options, max_scroll, last, view_h=view_h)
                if not options.keyframes:
                    shows = "the scroll" if options.scroll != "none" else "the first screen"
                    with dog.step(f"while loading what {shows} shows", PRIME_SECONDS + 10):
                        if not _prime(page, cdp, points, capture, view_h, min(options.timeout, PRIME_SECONDS)):
                            warnings.append(f"some images or fonts {shows} shows had not loaded after "
                                            f"{min(options.timeout, PRIME_SECONDS):g} s")  # fmt: skip
                # Reveal-on-load animations (a hero that fades or slides in) still playing: the first screen holds
                # until they end (bounded), so the hero is seen at rest. Exact mode only: fast mode has one still.
                if exact:
                    # A video whose data came after the first frame started then: reruns differed from frame 0 on.
                    wait = min(options.timeout, PRIME_SECONDS)
                    with dog.step("while the page's videos load", wait + 5):
                        if not _videos_ready(page, max(y for _, y in points) + view_h, wait):
                            warnings.append(f"a video of the page had no picture after {wait:g} s: it is recorded "
                                            "from when it has one")  # fmt: skip
                with dog.step("while getting ready", bound):
                    intro = float(page.evaluate(_INTRO_JS)) if exact else 0.0
            points = scroll_keyframes(options, max_scroll, last, view_h=view_h, intro=intro)
            reached = round(max(y for _, y in points))
            target = scroll_target(options, max_scroll)
            if not options.keyframes and options.scroll != "none" and reached < target:
                warnings.append(f"scrolled to {reached} of {target} px: at a readable "
                                f"speed that is as deep as {options.duration:g} s go (a longer duration goes "
                                "deeper)")  # fmt: skip
            if exact:
                with dog.step("before the first frame", bound + 5):
                    direct = _direct_page(profile, cdp, capture, bound + 5)
                if direct is not None:
                    stack.callback(direct.close)
                capture_fps = _record_exact(page, cdp, tmp, preset, frames, points, options, on_progress, deadline,
                                            dog, capture, direct, drawn=close_browser,
                                            screencast=screencast, warnings=warnings)  # fmt: skip
            else:
                capture_fps = _record_fast(page, tmp, preset, frames, points, options, on_progress, deadline, dog,
                                           drawn=close_browser)  # fmt: skip
        finally:
            close_browser()
            if profile is not None:
                shutil.rmtree(profile, ignore_errors=True)
        page_videos = sum(copy is not None for copy in videos.copies.values()) if videos else 0
        if videos and videos.late:
            warnings.append(f"{len(videos.late)} video(s) of the page could not be copied for exact seeking within "
                            f"{videos.budget:g} s (a busy machine or a slow server), first "
                            f"{redact_url(videos.late[0])}: played as they are, they may differ between reruns; a "
                            "longer page timeout gives them more time")  # fmt: skip
        if blocked:
            warnings.append(f"blocked {len(blocked)} request(s) to private addresses, first {blocked[0]}")
        missing = [m for m in missing if not m.split(" (")[0].endswith("/favicon.ico")]
        if missing:
            more = ", …" if len(missing) > 3 else ""
            warnings.append(f"{len(missing)} resource(s) of the page did not load (it may lack fonts, styles, "
                            f"scripts or images): {', '.join(missing[:3])}{more}")  # fmt: skip
        info = probe(tmp, count_frames=True)
        problems = check_video(info, preset, expected_frames=frames, expected_seconds=frames / fps, path=tmp)
        if problems:
            raise OutputCheckError(f"recording of {url} does not meet preset {preset.name}: " + "; ".join(problems),
                                   hint="the file was not kept")  # fmt: skip
    if on_progress:
        on_progress(Progress(stage="done", done=frames, total=frames, unit="frames"))
    return RecordResult(
        url=url, output=Path(output), mode=options.mode, capture=capture, browser=executable or "playwright",
        frames=frames, fps=fps, seconds=time.monotonic() - started, page_videos=page_videos,
        capture_fps=capture_fps, page_height=page_height, max_scroll=max_scroll, scroll_reached=reached,
        warnings=warnings,
        info=info.model_copy(update={"path": str(output)}),
    )  # fmt: skip


def _visitor_agent(browser: Any) -> str | None:
    """Chromium's own user agent without "Headless": sites and CDNs that turn "HeadlessChrome" away (a 403, a
    challenge page instead of the site) show the page they show a visitor's Chrome. A `User-Agent` header wins."""
    try:
        session = browser.new_browser_cdp_session()
        agent = str(session.send("Browser.getVersion")["userAgent"])
        session.detach()
    except Exception:  # an old browser without the call: its own agent then
        return None
    return agent.replace("HeadlessChrome/", "Chrome/")


# window.open gives null, as when a popup blocker stops it; a link or form that a script clicks or submits into
# another window does nothing (no one clicks during a recording, so every such click is the page's own). Fullscreen
# is refused, as a visitor's browser does without a click: Chromium granted a page's requestFullscreen() on a timer
# (the recorder's calls count as a user's), and the screencast lost the frame it happened on.
_NO_POPUPS = """
window.open = function () { return null; };
// Dismissed as the dialog handler would, without a round trip (a call waiting on the page blocks until then).
window.alert = function () {};
window.confirm = function () { return false; };
window.prompt = function () { return null; };
const elsewhere = (t) => t && !["_self", "_top", "_parent"].includes(t.toLowerCase());
addEventListener("click", (e) => {
  const a = e.target && e.target.closest && e.target.closest("a[target], area[target]");
  if (a && elsewhere(a.getAttribute("target"))) e.preventDefault();
}, true);
addEventListener("submit", (e) => { if (elsewhere(e.target.getAttribute("target"))) e.preventDefault(); }, true);
for (const name of ["requestFullscreen", "webkitRequestFullscreen", "webkitRequestFullScreen"]) {
  if (Element.prototype[name]) {
    Element.prototype[name] = function () { return Promise.reject(new TypeError("Permissions check failed")); };
  }
}
"""


def _wait_ready(page: Any, options: RecordOptions, timeout_ms: float, url: str) -> None:
    from playwright.sync_api import Error as PlaywrightError

    if not options.wait_for:
        return
    try:
        if options.wait_for == "networkidle":
            page.wait_for_load_state("networkidle", timeout=timeout_ms)
        else:
            # Timers only run on virtual time: advance it while polling, as a real browser's clock would.
            end = time.monotonic() + timeout_ms / 1000
            step = 0.0
            while not page.query_selector(options.wait_for):
                if time.monotonic() > end:
                    raise RecordError(
                        f"{url}: {options.wait_for!r} did not appear within {options.timeout:g} s",
                        hint="check the selector or raise --timeout",
                    )
                step += 100
                page.evaluate("(t) => window.__assetprep && window.__assetprep.advance(t)", step)  # fast mode: no shim
                time.sleep(0.05)
    except PlaywrightError as exc:
        raise RecordError(f"{url}: page never became ready: {_clean_page_error(exc)}") from None


def _encoder(preset: VideoPreset, out: Path, source: Any, x264_preset: X264Preset, *, jpeg: bool) -> Any:
    """Screenshots (`jpeg`: BT.601 full range by definition; else RGB PNG) into the H.264 tagged BT.709 limited range.
    swscale's default converted with BT.601: CSS #b61924 played back as (196, 39, 34); its accurate rounding, needed
    to stay within 2 of the CSS colour, took 4x as long. zimg converts and scales exactly, and faster (0.87 s vs 1.07 s
    for 300 frames at 720p). JPEG frames are already YUV 4:2:0: the colorspace filter changes their matrix and range
    in place, 0.8 ms a 1080p frame against zimg's 4 ms (it goes through 4:4:4), on the cores Chromium draws on; a
    frame of another size is then scaled YUV to YUV, where no matrix is involved."""
    preset = preset.model_copy(update={"x264_preset": x264_preset})
    if jpeg:
        video = source.filter("colorspace", all="bt709", iall="bt470bg", irange="pc", range="tv", fast=1,
                              format="yuv420p")  # fmt: skip
        video = video.filter("scale", w=preset.width, h=preset.height, flags="bicubic")
    else:
        video = source.filter("zscale", w=preset.width, h=preset.height, f="bicubic", m="709", r="limited")
    video = video.filter("format", preset.pix_fmt)
    extra: dict[str, str] = {}
    if x264_preset == "superfast":
        # superfast turns macroblock-tree off: 27% more bytes on the bench's real page, to save 11% of x264's time.
        # A scrolled page moves by whole pixels and has no scene cuts, so subpixel refinement, scene-cut detection,
        # adaptive B-frame placement and weighted B prediction buy next to nothing: without them x264 took 4.8 s of
        # CPU instead of 5.9 s for 300 frames of the bench's real page at 1080p, 4.38 MB instead of 4.62, SSIM
        # 0.9948 against 0.9953; the 1080p recording went from 1.61x to 1.55x real time (3 interleaved rounds).
        extra["x264-params"] = "mbtree=1:rc-lookahead=10:subme=0:scenecut=0:b-adapt=0:weightb=0"
    return ffmpeg.output(video, str(out), **{**x264_options(preset), **extra, **mp4_options(), "an": None})


# A screencast picture comes 20-60 ms after its frame is drawn; one that has not come by then was skipped (not seen
# since frames are evenly timed and wholly damaged): the recording is made again with a screenshot per frame.
CAST_LOST_S = 10.0
PRIME_SECONDS = 10.0  # at most, walking the page and waiting for its images and fonts before the first frame


def _videos_ready(page: Any, bottom: float, seconds: float) -> bool:
    """Wait (at most `seconds`) until every video the clock plays down to `bottom` px can show a frame: the page's
    and those in its frames (an embedded player) that begin above `bottom`."""
    from playwright.sync_api import Error as PlaywrightError

    def unready() -> int:
        count = int(page.evaluate("(b) => window.__assetprep.unready(b)", bottom))
        for frame in page.frames[1:]:
            try:  # the top document is at its top here: the box is where the frame is in it
                element = frame.frame_element()  # a handle the page keeps until disposed: one per frame and poll
                try:
                    box = element.bounding_box()
                finally:
                    element.dispose()
                if box is not None and box["y"] <= bottom:
                    count += int(frame.evaluate("() => window.__assetprep ? window.__assetprep.unready(1e9) : 0"))
            except PlaywrightError:  # gone or navigating meanwhile: its next document is asked next time
                continue
        return count

    end = time.monotonic() + seconds
    while not (ready := unready() == 0):
        if time.monotonic() > end:
            break
        time.sleep(0.05)
    return ready


def _prime(page: Any, cdp: Any, points: list[tuple[float, float]], capture: Capture, view_h: int,
           seconds: float) -> bool:  # fmt: skip
    """Walk the page down to the deepest point of the scroll, a screen at a time, so lazy content loads and its
    fade-ins play before the first frame (58 of 360 frames of a lazy image list were almost white); then back to the
    top. The clock moves a tenth of a second per screen, and frames are drawn (deterministic mode draws none by
    itself). Without a scroll, frames are drawn until the first screen's images and fonts have loaded, the clock
    held: the load event does not wait for lazy images, and the first screen's came in on frames 0-2 of the bench's
    page, not the same frames in every run. Whether all images and fonts in the range loaded in time."""
    bottom = max(y for _, y in points)
    end = time.monotonic() + seconds

    def tick(y: float, ms: float = 100) -> None:
        """Scroll to `y`, move the clock `ms` on (0: held) and draw a frame."""
        clock = f"window.__assetprep && window.__assetprep.advance(window.__assetprep.now() + {ms}); "  # fast: none
        scroll = f"window.__assetprep ? window.__assetprep.scroll({round(y)}) : window.scrollTo(0, {round(y)})"
        cdp.send("Runtime.evaluate", {"expression": f"{clock}{scroll}"})
        if capture == "beginframe":
            cdp.send("HeadlessExperimental.beginFrame", {"interval": ms or 100, "noDisplayUpdates": False})
            if not ms:
                time.sleep(0.02)  # the clock held, the images still take their time to come
        else:
            time.sleep((ms or 20) / 1000)

    if bottom <= 0:
        while not (loaded := bool(page.evaluate(_LOADED_JS, view_h))) and time.monotonic() < end:
            tick(0, 0)
        return loaded
    y = 0.0
    while y < bottom and time.monotonic() < end:
        y = min(bottom, y + view_h)
        tick(y)
        time.sleep(0.02)  # the requests the new screen made go out
    loaded = False
    while time.monotonic() < end:
        if loaded := bool(page.evaluate(_LOADED_JS, bottom + view_h)):
            break
        tick(bottom)
    # Their fade-ins end here, not on screen. Drawn frame by frame, an observer's callback comes after a frame, the
    # transition it starts is pinned on the next and then runs 1.2 s: 15 ticks of 0.1 s did as much with 9 more
    # frames (~0.13 s). Otherwise real time passes: 1.5 s.
    for ms in [300] * 6 if capture == "beginframe" else [100] * 15:
        tick(bottom, ms)
    tick(0)
    return loaded


def _direct_page(profile: Path | None, cdp: Any, capture: Capture, timeout: float) -> DirectPage | None:
    """The page's own DevTools connection for the frame loop, or None (Playwright's session serves then)."""
    if profile is None:
        return None
    direct = None
    try:
        target = str(cdp.send("Target.getTargetInfo")["targetInfo"]["targetId"])
        direct = DirectPage.open(profile, target, timeout)
        if capture == "beginframe":
            direct.call("HeadlessExperimental.enable")
        return direct
    except Exception as exc:  # any failure only costs speed
        if direct is not None:
            direct.close()
        log.debug("frame loop through Playwright: %s", exc)
        return None


def _record_exact(
    page: Any, cdp: Any, tmp: Path, preset: VideoPreset, frames: int, points: list[tuple[float, float]],
    options: RecordOptions, on_progress: ProgressCallback | None, deadline: float, dog: _Watchdog,
    capture: Capture, direct: DirectPage | None = None, drawn: Callable[[], None] | None = None,
    screencast: bool = True, warnings: list[str] | None = None,
) -> float:  # fmt: skip
    """Frame by frame on the virtual clock; the capture rate (frames per wall second). `drawn` is called once the
    last picture is taken, while ffmpeg still encodes; what the recording should say is added to `warnings`.

    With `direct`, the clock and the pictures go over it (the Node driver's hop cost ~2 ms a frame, and its CPU),
    and the next frame's video seeks start while this frame's picture travels and is piped. Seeks still going
    after _DIRECT_SEEK_MS are waited for through Playwright's session: while that call waits, Playwright answers
    the byte ranges of page videos' copies the seeks may be waiting for."""
    send = direct.call if direct is not None else cdp.send
    limit = _DIRECT_SEEK_MS if direct is not None else ""  # through Playwright: no limit
    bound = options.timeout
    prepared = page.url
    with dog.step("before the first frame", bound), _following(page, dog, prepared, None, bound):
        offset = page.evaluate("() => window.__assetprep.start()")  # virtual time spent getting ready
        if offset is None:  # not the document made ready: _following finds where the page went
            raise RecordError(f"{page.url}: the page changed while it was made ready")
    fps = preset.fps
    jpeg = {"format": "jpeg", "quality": options.jpeg_quality, "optimizeForSpeed": True}

    def grab() -> str:
        """The frame's JPEG in base64, decoded once the next frame's seeks are on their way."""
        if capture == "screenshot":
            return str(send("Page.captureScreenshot", jpeg)["data"])
        # A screenshot can be missing while the renderer initialises: ask again (nothing moved in between).
        for _ in range(10):
            answer = send("HeadlessExperimental.beginFrame", {"interval": 1000 / fps, "screenshot": jpeg})
            if answer.get("screenshotData"):
                return str(answer["screenshotData"])
        raise RecordError(f"{page.url}: Chromium returned no frame", hint="retry, or set CHROMIUM to a full Chromium")

    t0 = time.monotonic()
    done = 0
    late: list[int] = []  # frames drawn after a video's seek ran out of time (TIME_SHIM's seekMedia)

    def clock_ms(i: int) -> float:
        """Frame i's virtual time; the ahead seeks must aim at exactly the time advance() will then be given."""
        return offset + i / fps * 1000

    def sent(pictures: list[str]) -> Iterator[bytes]:
        nonlocal done
        for picture in pictures:
            yield base64.b64decode(picture)
            done += 1
            if on_progress is not None and (done % 5 == 0 or done == frames):
                spent = time.monotonic() - t0
                on_progress(Progress(stage="record", done=done, total=frames, unit="frames",
                                     speed=done / spent if spent else None))  # fmt: skip

    # The pictures come from Chromium's screencast (_cdp.Screencast): the next frame is drawn while this one is
    # encoded. 10 s of the bench's real page: 13.6 -> 12.0 s at 720p, 22.2 -> 18.3 s at 1080p, the same frames.
    cast = None
    if direct is not None and capture == "beginframe" and screencast:
        w, h = round(page.viewport_size["width"] * options.scale), round(page.viewport_size["height"] * options.scale)
        try:
            with dog.step("before the first frame", bound):
                cast = Screencast(direct, size=(w, h), quality=options.jpeg_quality, interval_ms=1000 / fps,
                                  lost_after=min(CAST_LOST_S, bound / 2))  # within the frame's watchdog  # fmt: skip
        except RecordError as exc:  # a browser that refuses it: a screenshot per frame (a hung page still fails)
            if dog.fired:
                raise
            log.debug("no screencast: %s", exc)

    def redraw(keep: bool) -> None:
        """Draw the frame again, wholly: a draw with no damage of the page's own gets no picture (after the revive's
        seeks only the video's layer had changed)."""
        assert cast is not None and direct is not None
        direct.call("Runtime.evaluate", {"expression": "window.__assetprep.damage()"})
        cast.draw(keep=keep)

    def shots() -> Iterator[bytes]:
        for i in range(frames):
            _process.check_cancelled(f"recording of {page.url}")
            t = i / fps
            step = _FRAME_JS.format(t=clock_ms(i), y=round(scroll_at(points, t)), limit=limit)
            if cast is not None:
                step = "window.__assetprep.damage(); " + step
            with dog.step(f"at frame {i}", min(bound, max(1.0, deadline - time.monotonic()))):
                # The document may go away under the clock's call, or the call may run in the one it went on to.
                with _following(page, dog, prepared, t, bound):
                    flags = _flags(send("Runtime.evaluate", {"expression": step, "awaitPromise": True}), page.url, i)
                    if flags & 4:
                        raise RecordError(f"{page.url}: the page changed at frame {i}")
                if flags & 1:  # seeks still going: Playwright's turn (see above); the answer keeps flag 2
                    flags = _flags(cdp.send("Runtime.evaluate", {"expression": "window.__assetprep.settled()",
                                                                 "awaitPromise": True}), page.url, i)  # fmt: skip
                if flags & 8:
                    late.append(i)
                if flags & 2:  # a video back in view: drawn, then its picture anew (twice)
                    for last in ("false", "true"):
                        if cast is not None:
                            redraw(keep=False)
                        else:
                            grab()
                        _flags(cdp.send("Runtime.evaluate", {"expression": f"window.__assetprep.revive({last})",
                                                             "awaitPromise": True}), page.url, i)  # fmt: skip
                # Under load a page video's first picture was drawn a little differently from run to run (up to 48
                # code values in places, in 3 of 4 reruns); the second drawing of frame 0 was the same in each (6 of
                # 6). The first is dropped; the second draws the whole viewport anew.
                if cast is None:
                    frame = grab()
                    pictures = [grab()] if i == 0 else [frame]
                elif i == 0:
                    cast.draw(keep=False)
                    redraw(keep=True)
                elif flags & 2:  # the revive's draws came after this frame's step and its damage
                    redraw(keep=True)
                else:
                    cast.draw()
                if direct is not None and i + 1 < frames:
                    direct.post("Runtime.evaluate", {"expression": _AHEAD_JS.format(t=clock_ms(i + 1))})
                if cast is not None:  # one picture may still be on its way while the next frame is drawn
                    pictures = list(cast.pictures(outstanding=1 if i + 1 < frames else 0))
            yield from sent(pictures)
        if late and warnings is not None:
            with dog.step("after the last frame", bound):
                answer = cdp.send("Runtime.evaluate", {"expression": "window.__assetprep.lateVideos()",
                                                       "returnByValue": True})  # fmt: skip
            urls = answer.get("result", {}).get("value") or ["?"]
            warnings.append(f"{len(urls)} video(s) of the page took over {_SEEK_BOUND_S:g} s to seek, at "
                            f"{len(late)} frame(s) from {late[0] / fps:.1f} s on (first {redact_url(str(urls[0]))}): "
                            "their data came slowly, so those frames may show an earlier picture, and reruns may "
                            "differ")  # fmt: skip
        if drawn is not None:
            drawn()

    source = ffmpeg.input("pipe:0", f="image2pipe", c="mjpeg", framerate=fps)
    _process.run_ffmpeg(
        _encoder(preset, tmp, source, options.x264_preset, jpeg=True), stage="encode", total=None, on_progress=None,
        timeout=max(30.0, deadline - time.monotonic()), what="ffmpeg (recording)", stdin_chunks=shots(),
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    return frames / elapsed if elapsed else 0.0


@contextlib.contextmanager
def _following(page: Any, dog: _Watchdog, prepared: str, seconds: float | None, bound: float) -> Iterator[None]:
    """An error of the page's, while it is made ready (`seconds` None) or `seconds` into the recording, becomes
    PageNavigatedError if the page went on by itself from the document made ready (`prepared`, its URL); not once
    the watchdog fired (the page hung and its browser is gone)."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        yield
    except (PlaywrightError, RecordError) as exc:
        if dog.fired or isinstance(exc, PageNavigatedError):
            raise
        went = _went_on(page, prepared, seconds, bound)
        if went is None:
            raise
        raise went from None


_ASKING_S = 10.0  # at most, for the document a page went on to to answer (_went_on)


def _went_on(page: Any, prepared: str, seconds: float | None, bound: float) -> PageNavigatedError | None:
    """The page's own navigation away from the document made ready (`prepared`, its URL) `seconds` into the
    recording (None: before it), found by asking the document the page shows (TIME_SHIM's owned()) until it answers
    (at most `bound` s, and _ASKING_S); None if it is the same document."""
    from playwright.sync_api import Error as PlaywrightError

    end = time.monotonic() + min(bound, _ASKING_S)
    while True:
        try:
            page.wait_for_load_state("domcontentloaded", timeout=max(1.0, end - time.monotonic()) * 1000)
            if page.evaluate("() => !!(window.__assetprep && window.__assetprep.owned())"):
                return None
            break
        except PlaywrightError:  # a document going or coming: asked again
            if time.monotonic() > end or page.is_closed():
                return None
            time.sleep(0.05)
    url = page.url
    try:  # a page that failed to load is Chromium's chrome-error:// page; its history entry has the URL it tried
        history = page.context.new_cdp_session(page).send("Page.getNavigationHistory")
        url = str(history["entries"][history["currentIndex"]]["url"]) or url
    except (PlaywrightError, KeyError, IndexError, TypeError):
        pass
    when = "while it was made ready" if seconds is None else f"{seconds:.1f} s into the recording"
    if url == prepared:
        raise RecordError(f"{prepared} reloads itself {when} (a refresh timer)",
                          hint="give a page that stays, or a shorter --duration")  # fmt: skip
    return PageNavigatedError(f"{prepared} went on to {url}", url=url, seconds=seconds)


def _flags(answer: dict[str, Any], url: str, i: int) -> int:
    """The clock's answer for frame i: 1 seeks still going, 2 a video came back into view, 4 not the document made
    ready (TIME_SHIM)."""
    if "exceptionDetails" in answer:
        details = answer["exceptionDetails"]
        # "Uncaught" alone said nothing: the exception's own first line (TypeError: ...) does.
        said = str((details.get("exception") or {}).get("description") or details.get("text") or "script error")
        raise RecordError(f"{url}: the virtual clock failed at frame {i}: {said.splitlines()[0]}")
    return int(answer.get("result", {}).get("value") or 0)


def _frame_control(cdp: Any, dog: _Watchdog, bound: float) -> Capture:
    """beginframe: the headless shell draws a frame when asked; screenshot: a full Chromium's compositor runs by
    itself (it has no HeadlessExperimental domain)."""
    try:
        with dog.step("before the first frame", bound):
            cdp.send("HeadlessExperimental.enable")
        return "beginframe"
    except RecordError:
        raise
    except Exception:
        return "screenshot"


def _record_fast(
    page: Any, tmp: Path, preset: VideoPreset, frames: int, points: list[tuple[float, float]],
    options: RecordOptions, on_progress: ProgressCallback | None, deadline: float, dog: _Watchdog,
    drawn: Callable[[], None] | None = None,
) -> float:  # fmt: skip
    # Fixed and sticky elements would be painted once per screen in a tall capture: pin them to the top instead.
    # Sticky ones go back into the flow (relative); fixed ones are pinned where they are at scroll 0, same size.
    with dog.step("before the screenshot", options.timeout + 5):
        page.evaluate("""() => { window.scrollTo(0, 0);
          for (const el of document.querySelectorAll('*')) {
            const p = getComputedStyle(el).position;
            if (p === 'sticky') el.style.setProperty('position', 'relative', 'important');
            if (p !== 'fixed') continue;
            const r = el.getBoundingClientRect();
            for (const [k, v] of [['position', 'absolute'], ['top', r.top + 'px'], ['left', r.left + 'px'],
                                  ['width', r.width + 'px'], ['height', r.height + 'px'], ['bottom', 'auto'],
                                  ['right', 'auto']]) el.style.setProperty(k, v, 'important');
          } }""")
    t0 = time.monotonic()
    vw, vh = page.viewport_size["width"], page.viewport_size["height"]
    height = vh + math.ceil(max(y for _, y in points))  # the plan stays within _MAX_FULLPAGE (see depth)
    shot = tmp.with_suffix(".png")
    try:
        with dog.step("while taking the screenshot", options.timeout + 5):
            page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": vw, "height": height}, full_page=True,
                            timeout=options.timeout * 1000)  # fmt: skip
        if on_progress is not None:
            on_progress(Progress(stage="record", done=1, total=2, unit="shots"))
        if drawn is not None:
            drawn()
        scale = options.scale
        y = _ffmpeg_expr([(t, p * scale) for t, p in points], preset.fps)
        # The loop filter decodes the shot once and repeats it in memory; an input-side -loop 1 decoded the tall
        # PNG again for every frame (5 s at 720p: 0.9 s instead of 1.9 s).
        source = (
            ffmpeg.input(str(shot))
            .filter("loop", loop=frames - 1, size=1, start=0)
            .filter("settb", f"1/{preset.fps}")
            .filter("setpts", "N")
            .filter("crop", round(vw * scale), round(vh * scale), 0, y)
        )
        _process.run_ffmpeg(
            _encoder(preset, tmp, source, options.x264_preset, jpeg=False), stage="encode", total=frames / preset.fps,
            timeout=max(30.0, deadline - time.monotonic()), on_progress=on_progress, what="ffmpeg (fast recording)",
        )  # fmt: skip
    finally:
        shot.unlink(missing_ok=True)
    elapsed = time.monotonic() - t0
    return frames / elapsed if elapsed else 0.0


def parse_viewport(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--viewport must look like 1280x720, got {text!r}") from None
    if not (100 <= w <= 7680 and 100 <= h <= 4320):
        raise ConfigError(f"--viewport {text} is out of range (100x100 to 7680x4320)")
    return w, h
