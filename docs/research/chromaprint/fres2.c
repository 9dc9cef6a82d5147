#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <stdint.h>
#include <immintrin.h>
static double eval_poly(const double *c, int n, double x){ double s=c[n-1]; for(int i=n-2;i>=0;--i){ s*=x; s+=c[i];} return s; }
static double bessel(double x){
 static const double p1[]={-2.2335582639474375249e+15,-5.5050369673018427753e+14,-3.2940087627407749166e+13,-8.4925101247114157499e+11,-1.1912746104985237192e+10,-1.0313066708737980747e+08,-5.9545626019847898221e+05,-2.4125195876041896775e+03,-7.0935347449210549190e+00,-1.5453977791786851041e-02,-2.5172644670688975051e-05,-3.0517226450451067446e-08,-2.6843448573468483278e-11,-1.5982226675653184646e-14,-5.2487866627945699800e-18};
 static const double q1[]={-2.2335582639474375245e+15,7.8858692566751002988e+12,-1.2207067397808979846e+10,1.0377081058062166144e+07,-4.8527560179962773045e+03,1.0};
 static const double p2[]={-2.2210262233306573296e-04,1.3067392038106924055e-02,-4.4700805721174453923e-01,5.5674518371240761397e+00,-2.3517945679239481621e+01,3.1611322818701131207e+01,-9.6090021968656180000e+00};
 static const double q2[]={-5.5194330231005480228e-04,3.2547697594819615062e-02,-1.1151759188741312645e+00,1.3982595353892851542e+01,-6.0228002066743340583e+01,8.5539563258012929600e+01,-3.1446690275135491500e+01,1.0};
 if(x==0) return 1.0; x=fabs(x);
 if(x<=15){ double y=x*x; return eval_poly(p1,15,y)/eval_poly(q1,6,y);} 
 double y=1/x-1.0/15; double r=eval_poly(p2,7,y)/eval_poly(q2,8,y); return exp(x)/sqrt(x)*r; }
static long gcd(long a,long b){ while(b){long t=a%b;a=b;b=t;} return a; }
int main(int argc,char**argv){
 int in_rate=atoi(argv[1]), out_rate=11025; const char*inf=argv[2]; const char*reff=argv[3];
 FILE*f=fopen(inf,"rb"); fseek(f,0,SEEK_END); long nb=ftell(f); fseek(f,0,SEEK_SET); float*st=malloc(nb); fread(st,1,nb,f); fclose(f);
 long n=nb/8; float*x=malloc((n+64)*4);
 float*xs[2]; for(int c=0;c<2;c++){ xs[c]=malloc((n+64)*4); for(long i=0;i<n;i++) xs[c][i]=st[2*i+c]; for(long i=n;i<n+64;i++) xs[c][i]=0; } float*res[2]; res[0]=malloc(n*4); res[1]=malloc(n*4); for(long i=n;i<n+64;i++) x[i]=0;
 double cutoff=0.8; double factor=fmin(out_rate*cutoff/in_rate,1.0); int pc=256; int fl=(int)ceil(16/factor); if(fl<1)fl=1; if(fl>1) fl=(fl+1)&~1;
 long g=gcd(out_rate,in_rate); if(out_rate/g<=pc) pc=out_rate/g;
 int alloc=(fl+7)&~7; float*bank=calloc(alloc*(pc+1),4); int ph_nb= pc%2?pc:pc/2+1; int center=(fl-1)/2; double norm=0; double*tab=malloc(8*fl);
 for(int ph=0;ph<ph_nb;ph++){ for(int i=0;i<fl;i++){ double xx=M_PI*((double)(i-center)-(double)ph/pc)*factor; double y= xx==0?1.0:sin(xx)/xx; double w=2.0*xx/(factor*fl*M_PI); y*=bessel(9.0*sqrt(fmax(1-w*w,0))); tab[i]=y; if(!ph) norm+=y; }
   for(int i=0;i<fl;i++) bank[ph*alloc+i]=tab[i]*1/norm;
   if(pc%2==0) for(int i=0;i<fl;i++) bank[(pc-ph)*alloc+fl-1-i]=bank[ph*alloc+i]; }
 for(int i=alloc-2;i>=0;i--) bank[alloc*pc+1+i]=bank[i]; bank[alloc*pc]=bank[alloc-1];
 long si=out_rate, di=(long)in_rate*pc; g=gcd(si,di); si/=g; di/=g; while(di<(1<<20)&&si<(1<<20)){di*=2;si*=2;} long div=di/si, mod=di%si;
 float inv = 1.0f/(float)si;
 // extended signal with mirror at start
 FILE*rf=fopen(reff,"rb"); fseek(rf,0,SEEK_END); long rn=ftell(rf)/2; fseek(rf,0,SEEK_SET); int16_t*ref=malloc(rn*2); fread(ref,2,rn,rf); fclose(rf);
 long half=(fl-1)/2; long cnt=0, bad=0; for(int c=0;c<2;c++){ float*x=xs[c]; float*xe=malloc((n+half+64)*4); for(long j=0;j<half;j++) xe[j]=x[half-j]; for(long j=0;j<n+64;j++) xe[half+j]=x[j];
 long s=0; long index=0, frac=0; cnt=0; int nit=(fl+7)/8;
 while(s+fl-1 <= n-1+half){
   const float*src=xe+s; const float*f1=bank+index*alloc; const float*f2=f1+alloc; float r;
   if(mod){ __m256 a=_mm256_setzero_ps(), b=_mm256_setzero_ps();
     for(int k=0;k<nit;k++){ __m256 v=_mm256_loadu_ps(src+8*k); b=_mm256_fmadd_ps(v,_mm256_loadu_ps(f2+8*k),b); a=_mm256_fmadd_ps(v,_mm256_loadu_ps(f1+8*k),a);} 
     __m128 a4=_mm_add_ps(_mm256_castps256_ps128(a),_mm256_extractf128_ps(a,1)); __m128 b4=_mm_add_ps(_mm256_castps256_ps128(b),_mm256_extractf128_ps(b,1));
     __m128 t=_mm_set1_ps((float)frac*inv); b4=_mm_sub_ps(b4,a4); a4=_mm_fmadd_ps(b4,t,a4);
     __m128 h=_mm_movehl_ps(a4,a4); a4=_mm_add_ps(a4,h); h=_mm_shuffle_ps(a4,a4,1); a4=_mm_add_ss(a4,h); r=_mm_cvtss_f32(a4);
   } else { __m256 a=_mm256_setzero_ps(); for(int k=0;k<nit;k++){ a=_mm256_fmadd_ps(_mm256_loadu_ps(src+8*k),_mm256_loadu_ps(f1+8*k),a);} 
     __m128 a4=_mm_add_ps(_mm256_castps256_ps128(a),_mm256_extractf128_ps(a,1)); __m128 h=_mm_movehl_ps(a4,a4); a4=_mm_add_ps(a4,h); h=_mm_shuffle_ps(a4,a4,1); a4=_mm_add_ss(a4,h); r=_mm_cvtss_f32(a4);} 
   res[c][cnt]=r; cnt++; frac+=mod; index+=div; if(frac>=si){frac-=si; index++;} while(index>=pc){ s++; index-=pc; }
 }
 }
 for(long k=0;k<cnt;k++){ float m=res[0][k]*0.5f + res[1][k]*0.5f; long v=lrintf(m*32768.0f); if(v>32767)v=32767; if(v<-32768)v=-32768; if(k<rn && v!=ref[k]){ if(bad<5) printf("diff at %ld: %ld vs %d\n",k,v,ref[k]); bad++; } }
 printf("rate %d pc %d fl %d mod %ld: produced %ld ref %ld bad %ld\n", in_rate, pc, fl, mod, cnt, rn, bad);
}
