import ctypes, ctypes.util, wave, sys, subprocess, array
avu = ctypes.CDLL("libavutil.so.57")
swr = ctypes.CDLL("libswresample.so.4")
cp  = ctypes.CDLL("libchromaprint.so.1")
swr.swr_alloc.restype = ctypes.c_void_p
avu.av_opt_set_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int]
avu.av_opt_set_double.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_double, ctypes.c_int]
avu.av_opt_get_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
swr.swr_init.argtypes=[ctypes.c_void_p]
swr.swr_convert.argtypes=[ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
AV_SAMPLE_FMT_S16=1; AV_SAMPLE_FMT_FLT=3; AV_SAMPLE_FMT_FLTP=8
def default_layout(n): return {1:0x4, 2:0x3}[n]
def make_swr(isf, isr, ich, osr=11025, och=1, compat=True, extra={}):
    s = swr.swr_alloc()
    if compat:
        avu.av_opt_set_int(s, b"resampler", 0, 0)
        avu.av_opt_set_int(s, b"filter_size", 16, 0)
        avu.av_opt_set_int(s, b"phase_shift", 8, 0)
        avu.av_opt_set_int(s, b"linear_interp", 1, 0)
        avu.av_opt_set_double(s, b"cutoff", 0.8, 0)
    for k,v in extra.items(): avu.av_opt_set_int(s, k.encode(), v, 0)
    avu.av_opt_set_int(s, b"isf", isf, 0); avu.av_opt_set_int(s, b"isr", isr, 0)
    avu.av_opt_set_int(s, b"icl", default_layout(ich), 0); avu.av_opt_set_int(s, b"ich", ich, 0)
    avu.av_opt_set_int(s, b"osf", AV_SAMPLE_FMT_S16, 0); avu.av_opt_set_int(s, b"osr", osr, 0)
    avu.av_opt_set_int(s, b"ocl", default_layout(och), 0); avu.av_opt_set_int(s, b"och", och, 0)
    r = swr.swr_init(s); assert r >= 0, r
    return s
def getopt(s, name):
    v = ctypes.c_int64(); avu.av_opt_get_int(s, name.encode(), 0, ctypes.byref(v)); return v.value
def convert_s16(s, pcm, ch, chunk, flush=True, outcap=8192):
    # pcm: array('h') interleaved
    out = array.array('h')
    n = len(pcm)//ch
    obuf = (ctypes.c_int16 * (outcap*1))()
    optr = (ctypes.c_void_p*1)(ctypes.cast(obuf, ctypes.c_void_p))
    for st in range(0, n, chunk):
        seg = pcm[st*ch:(st+chunk)*ch]
        ibuf = (ctypes.c_int16*len(seg))(*seg)
        iptr = (ctypes.c_void_p*1)(ctypes.cast(ibuf, ctypes.c_void_p))
        k = swr.swr_convert(s, optr, outcap, iptr, len(seg)//ch)
        assert k >= 0
        out.extend(obuf[:k])
    nflush = 0
    if flush:
        k = swr.swr_convert(s, optr, outcap, None, 0)
        out.extend(obuf[:max(k,0)]); nflush = k
    return out, nflush
def chroma_raw(samples, rate=11025, ch=1, algo=1):
    cp.chromaprint_new.restype = ctypes.c_void_p
    ctx = cp.chromaprint_new(algo)
    cp.chromaprint_start.argtypes=[ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    cp.chromaprint_feed.argtypes=[ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    cp.chromaprint_finish.argtypes=[ctypes.c_void_p]
    cp.chromaprint_get_raw_fingerprint.argtypes=[ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_uint32)), ctypes.POINTER(ctypes.c_int)]
    cp.chromaprint_get_fingerprint.argtypes=[ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]
    cp.chromaprint_start(ctx, rate, ch)
    buf = (ctypes.c_int16*len(samples))(*samples)
    cp.chromaprint_feed(ctx, buf, len(samples))
    cp.chromaprint_finish(ctx)
    p = ctypes.POINTER(ctypes.c_uint32)(); sz = ctypes.c_int()
    cp.chromaprint_get_raw_fingerprint(ctx, ctypes.byref(p), ctypes.byref(sz))
    raw = [p[i] for i in range(sz.value)]
    s = ctypes.c_char_p(); cp.chromaprint_get_fingerprint(ctx, ctypes.byref(s))
    return raw, s.value.decode()
def read_wav(path):
    w = wave.open(path); ch = w.getnchannels(); sr = w.getframerate()
    a = array.array('h'); a.frombytes(w.readframes(w.getnframes())); return a, ch, sr
def fpcalc(path, *args):
    o = subprocess.run(["fpcalc", *args, path], capture_output=True, text=True).stdout
    d = dict(l.split("=",1) for l in o.strip().splitlines())
    return d
