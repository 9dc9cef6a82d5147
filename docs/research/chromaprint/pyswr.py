import math, struct
from fractions import Fraction
def f32(x): return struct.unpack('f', struct.pack('f', x))[0]
def lrintf(x): return int(round(f32(x)))  # round half even
def eval_poly(c, x):
    s = c[-1]
    for i in range(len(c)-2, -1, -1):
        s *= x; s += c[i]
    return s
P1=[-2.2335582639474375249e+15,-5.5050369673018427753e+14,-3.2940087627407749166e+13,-8.4925101247114157499e+11,-1.1912746104985237192e+10,-1.0313066708737980747e+08,-5.9545626019847898221e+05,-2.4125195876041896775e+03,-7.0935347449210549190e+00,-1.5453977791786851041e-02,-2.5172644670688975051e-05,-3.0517226450451067446e-08,-2.6843448573468483278e-11,-1.5982226675653184646e-14,-5.2487866627945699800e-18]
Q1=[-2.2335582639474375245e+15,7.8858692566751002988e+12,-1.2207067397808979846e+10,1.0377081058062166144e+07,-4.8527560179962773045e+03,1.0]
P2=[-2.2210262233306573296e-04,1.3067392038106924055e-02,-4.4700805721174453923e-01,5.5674518371240761397e+00,-2.3517945679239481621e+01,3.1611322818701131207e+01,-9.6090021968656180000e+00]
Q2=[-5.5194330231005480228e-04,3.2547697594819615062e-02,-1.1151759188741312645e+00,1.3982595353892851542e+01,-6.0228002066743340583e+01,8.5539563258012929600e+01,-3.1446690275135491500e+01,1.0]
def bessel(x):
    if x == 0: return 1.0
    x = abs(x)
    if x <= 15:
        y = x*x; return eval_poly(P1,y)/eval_poly(Q1,y)
    y = 1/x - 1.0/15
    r = eval_poly(P2,y)/eval_poly(Q2,y)
    return (math.exp(x)/math.sqrt(x))*r
class Res:
    def __init__(self, out_rate, in_rate, filter_size=16, phase_shift=8, linear=1, cutoff=0.8, beta=9.0, fmt='s16'):
        factor = min(out_rate*cutoff/in_rate, 1.0)
        pc = 1 << phase_shift
        fl = max(int(math.ceil(filter_size/factor)), 1)
        if fl > 1: fl = (fl+1)&~1
        fr = Fraction(out_rate, in_rate)
        if fr.numerator <= pc: pc = fr.numerator
        self.pc, self.fl, self.linear, self.fmt = pc, fl, linear, fmt
        alloc = (fl+7)&~7; self.alloc = alloc
        bank = [0]*(alloc*(pc+1))
        ph_nb = pc if pc % 2 else pc//2+1
        center = (fl-1)//2
        if factor > 1.0: factor = 1.0
        scale = 32768 if fmt=='s16' else 1
        sin_lut = [math.sin(math.pi*ph/pc)*(1 if center & 1 else -1) for ph in range(ph_nb)] if factor == 1.0 else [0.0]*ph_nb
        norm = 0.0
        for ph in range(ph_nb):
            s = sin_lut[ph]; tab=[0.0]*fl
            for i in range(fl):
                x = math.pi * ((float(i - center)) - float(ph)/pc) * factor
                if x == 0: y = 1.0
                elif factor == 1.0: y = s/x
                else: y = math.sin(x)/x
                w = 2.0*x/(factor*fl*math.pi)
                y *= bessel(beta*math.sqrt(max(1-w*w, 0)))
                tab[i] = y; s = -s
                if ph == 0: norm += y
            for i in range(fl):
                v = tab[i]*scale/norm
                bank[ph*alloc+i] = max(-32768, min(32767, lrintf(v))) if fmt=='s16' else f32(v)
            if pc % 2 == 0:
                for i in range(fl):
                    bank[(pc-ph)*alloc + fl-1-i] = bank[ph*alloc+i]
        # memcpy tricks
        tmp = bank[0:alloc-1]
        bank[alloc*pc+1: alloc*pc+1+alloc-1] = tmp
        bank[alloc*pc] = bank[alloc-1]
        self.bank = bank
        f = Fraction(out_rate, in_rate*pc)
        si, di = f.numerator, f.denominator
        while di < (1<<20) and si < (1<<20): di*=2; si*=2
        self.src_incr, self.dst_incr = si, di
        self.div, self.mod = di//si, di % si
    def run(self, x, flush=False):
        """x: list of ints (mono). Returns outputs whose full window lies inside x (no flush)."""
        fl, pc, alloc, bank = self.fl, self.pc, self.alloc, self.bank
        half = (fl-1)//2
        n = len(x)
        def X(j): return x[-j] if j < 0 else x[j]
        out = []
        s = -half; index = 0; frac = 0
        use_lin = self.linear and self.mod != 0
        while s + fl - 1 <= n - 1:
            base = index*alloc
            if use_lin:
                val = 16384; v2 = 16384
                for i in range(fl):
                    xv = X(s+i); val += xv*bank[base+i]; v2 += xv*bank[base+alloc+i]
                d = (v2-val)*frac
                q = abs(d)//self.src_incr; q = q if d >= 0 else -q
                val += q
            else:
                val = 16384
                for i in range(fl): val += X(s+i)*bank[base+i]
            out.append(max(-32768, min(32767, val >> 15)))
            frac += self.mod; index += self.div
            if frac >= self.src_incr: frac -= self.src_incr; index += 1
            while index >= pc: s += 1; index -= pc
        return out
