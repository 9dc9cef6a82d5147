import base64
def compress(fp, algo=1):
    normal=[]; exc=[]
    prev=0
    for i,x in enumerate(fp):
        v = x if i==0 else (x ^ fp[i-1])
        bit=1; last=0
        while v:
            if v & 1:
                d = bit-last
                if d >= 7: normal.append(7); exc.append(d-7)
                else: normal.append(d)
                last = bit
            v >>= 1; bit += 1
        normal.append(0)
    def pack(vals, nbits):
        out=bytearray(); acc=0; n=0
        for v in vals:
            acc |= (v & ((1<<nbits)-1)) << n; n += nbits
            while n >= 8: out.append(acc & 255); acc >>= 8; n -= 8
        if n: out.append(acc & 255)
        return bytes(out)
    size=len(fp)
    b = bytes([algo & 255, (size>>16)&255, (size>>8)&255, size&255]) + pack(normal,3) + pack(exc,5)
    return base64.urlsafe_b64encode(b).decode().rstrip("=")
