//! Pure pieces of the release decision (records + claims → allowed or the reason), unit-tested
//! without a running service.

use dcr_protocol::wire::{SnpMinTcb, TcbLevel};

use dcr_verify::snp::{Product, Tcb};

/// Whether a report's REPORTED_TCB meets the policy's minimum for its product. No policy
/// minimum, or none for this product, is a refusal: the oldest acceptable firmware is a
/// decision the data owner makes at registration, never a silent default here.
pub fn snp_tcb_allowed(min: Option<&SnpMinTcb>, product: Product, tcb: &Tcb) -> Result<(), String> {
    let name = format!("{product:?}");
    let level: Option<&TcbLevel> = min.and_then(|m| match product {
        Product::Milan => m.milan.as_ref(),
        Product::Genoa => m.genoa.as_ref(),
        Product::Turin => m.turin.as_ref(),
    });
    let Some(level) = level else {
        return Err(format!(
            "the policy names no minimum SEV-SNP TCB for {name} (register with --snp-min-tcb {}:…)",
            name.to_lowercase()
        ));
    };
    let want = Tcb {
        fmc: level.fmc,
        bootloader: level.bootloader,
        tee: level.tee,
        snp: level.snp,
        microcode: level.microcode,
    };
    if tcb.at_least(&want) {
        Ok(())
    } else {
        Err(format!(
            "{name} REPORTED_TCB {} is below the policy's minimum {}",
            show(tcb),
            show(&want)
        ))
    }
}

fn show(t: &Tcb) -> String {
    let fmc = t.fmc.map(|f| format!("fmc={f},")).unwrap_or_default();
    format!(
        "{fmc}bl={},tee={},snp={},ucode={}",
        t.bootloader, t.tee, t.snp, t.microcode
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcr_protocol::wire::MILAN_MIN_TCB;

    #[test]
    fn minimum_tcb_per_product() {
        // virtee's Milan report (firmware 1.52.4): REPORTED_TCB bytes 03 00 00 00 00 00 08 73.
        let old = Tcb::decode(0x7308_0000_0000_0003, Product::Milan);
        assert_eq!(
            (old.bootloader, old.tee, old.snp, old.microcode),
            (3, 0, 8, 115)
        );
        let default = SnpMinTcb {
            milan: Some(MILAN_MIN_TCB),
            ..Default::default()
        };
        let e = snp_tcb_allowed(Some(&default), Product::Milan, &old).unwrap_err();
        assert!(
            e.contains("below the policy's minimum bl=4,tee=0,snp=24,ucode=219"),
            "{e}"
        );
        // A 2025 Milan host (bl 4, tee 0, snp 24, ucode 219) passes; one component lower fails.
        let new = Tcb::decode(0xdb18_0000_0000_0004, Product::Milan);
        assert!(snp_tcb_allowed(Some(&default), Product::Milan, &new).is_ok());
        let lower = Tcb::decode(0xda18_0000_0000_0004, Product::Milan);
        assert!(snp_tcb_allowed(Some(&default), Product::Milan, &lower).is_err());
        // An owner who accepts the old firmware says so explicitly.
        let lenient = SnpMinTcb {
            milan: Some(TcbLevel::parse("bl=3,tee=0,snp=8,ucode=115").unwrap()),
            ..Default::default()
        };
        assert!(snp_tcb_allowed(Some(&lenient), Product::Milan, &old).is_ok());
        // No minimum for the product, or no minimum at all: refused.
        let genoa = Tcb::decode(0x5417_0000_0000_000a, Product::Genoa);
        assert!(snp_tcb_allowed(Some(&default), Product::Genoa, &genoa)
            .unwrap_err()
            .contains("--snp-min-tcb genoa"));
        assert!(snp_tcb_allowed(None, Product::Milan, &new).is_err());
        // Turin's FMC component counts.
        let turin_min = SnpMinTcb {
            turin: Some(TcbLevel::parse("fmc=2,bl=1,tee=1,snp=1,ucode=1").unwrap()),
            ..Default::default()
        };
        let t = Tcb::decode(0x0100_0000_0101_0101, Product::Turin);
        assert!(snp_tcb_allowed(Some(&turin_min), Product::Turin, &t).is_err());
        // The CLI's level syntax.
        assert!(TcbLevel::parse("bl=1,tee=0,snp=2").is_err());
        assert!(TcbLevel::parse("bl=1,tee=0,snp=2,ucode=256").is_err());
        assert!(TcbLevel::parse("bl=1,tee=0,snp=2,ucode=3,x=1").is_err());
    }
}
