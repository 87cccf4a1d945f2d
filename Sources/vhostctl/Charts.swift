/// Grouped bar charts as SVG, for `bench backends --svg`: one group per category (a frame
/// size), one bar per series (a backend), a labelled value axis from 0, the median as the bar
/// and the min–max range as a whisker. Plain SVG 1.1 that browsers and rsvg render.
struct BarChart {
    struct Series {
        var name: String
        /// Per category: (median, min, max), or nil where there is no value.
        var values: [(median: Double, min: Double, max: Double)?]
    }

    var title: String
    var valueLabel: String
    var categories: [String]
    var series: [Series]

    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

    /// A round upper bound for the axis and its tick step.
    static func axis(maximum: Double) -> (top: Double, step: Double) {
        guard maximum > 0 else { return (1, 0.25) }
        var magnitude = 1.0
        while magnitude * 10 <= maximum { magnitude *= 10 }
        while magnitude > maximum { magnitude /= 10 }
        for multiple in [1.0, 2.0, 2.5, 5.0, 10.0] where magnitude * multiple >= maximum / 4 {
            let step = magnitude * multiple
            return ((maximum / step).rounded(.up) * step, step)
        }
        return (maximum, maximum / 4)
    }

    static func label(_ value: Double) -> String {
        if value >= 1e6 { return fixed(value / 1e6, places: value >= 1e7 ? 0 : 1) + "M" }
        if value >= 1e3 { return fixed(value / 1e3, places: value >= 1e4 ? 0 : 1) + "k" }
        return value == value.rounded() ? String(Int(value)) : fixed(value, places: 2)
    }

    static func escape(_ text: String) -> String {
        text.replacingAll("&", "&amp;").replacingAll("<", "&lt;").replacingAll(">", "&gt;")
    }

    /// The chart as an SVG group placed at (x, y), `width` × `height`.
    func svg(x: Double, y: Double, width: Double, height: Double) -> String {
        let left = 70.0, right = 130.0, top = 34.0, bottom = 42.0
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        let maximum = series.flatMap { $0.values.compactMap { $0?.max } }.max() ?? 0
        let (axisTop, step) = BarChart.axis(maximum: maximum)
        func yPos(_ v: Double) -> Double { top + plotHeight * (1 - v / axisTop) }
        var out = "<g transform=\"translate(\(fixed(x, places: 1)),\(fixed(y, places: 1)))\">\n"
        out += "<text x=\"\(fixed(width / 2, places: 1))\" y=\"20\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">\(BarChart.escape(title))</text>\n"
        var tick = 0.0
        while tick <= axisTop + step / 2 {
            let ty = yPos(tick)
            out += "<line x1=\"\(fixed(left, places: 1))\" y1=\"\(fixed(ty, places: 1))\" x2=\"\(fixed(left + plotWidth, places: 1))\" y2=\"\(fixed(ty, places: 1))\" stroke=\"#ddd\"/>\n"
            out += "<text x=\"\(fixed(left - 6, places: 1))\" y=\"\(fixed(ty + 4, places: 1))\" text-anchor=\"end\" font-size=\"11\">\(BarChart.label(tick))</text>\n"
            tick += step
        }
        out += "<text transform=\"translate(16,\(fixed(top + plotHeight / 2, places: 1))) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">\(BarChart.escape(valueLabel))</text>\n"
        let groupWidth = plotWidth / Double(max(categories.count, 1))
        let barWidth = groupWidth * 0.8 / Double(max(series.count, 1))
        for (c, category) in categories.enumerated() {
            let groupX = left + groupWidth * Double(c) + groupWidth * 0.1
            out += "<text x=\"\(fixed(left + groupWidth * (Double(c) + 0.5), places: 1))\" y=\"\(fixed(top + plotHeight + 18, places: 1))\" text-anchor=\"middle\" font-size=\"12\">\(BarChart.escape(category))</text>\n"
            for (s, entry) in series.enumerated() {
                guard c < entry.values.count, let value = entry.values[c] else { continue }
                let bx = groupX + barWidth * Double(s)
                let colour = BarChart.palette[s % BarChart.palette.count]
                out += "<rect x=\"\(fixed(bx, places: 1))\" y=\"\(fixed(yPos(value.median), places: 1))\" width=\"\(fixed(barWidth * 0.92, places: 1))\" height=\"\(fixed(plotHeight * value.median / axisTop, places: 1))\" fill=\"\(colour)\"><title>\(BarChart.escape(entry.name)) \(BarChart.escape(category)): \(BarChart.label(value.median))</title></rect>\n"
                let cx = bx + barWidth * 0.46
                out += "<line x1=\"\(fixed(cx, places: 1))\" y1=\"\(fixed(yPos(value.min), places: 1))\" x2=\"\(fixed(cx, places: 1))\" y2=\"\(fixed(yPos(value.max), places: 1))\" stroke=\"#333\"/>\n"
                out += "<text x=\"\(fixed(cx, places: 1))\" y=\"\(fixed(yPos(value.max) - 4, places: 1))\" text-anchor=\"middle\" font-size=\"10\">\(BarChart.label(value.median))</text>\n"
            }
        }
        out += "<line x1=\"\(fixed(left, places: 1))\" y1=\"\(fixed(top + plotHeight, places: 1))\" x2=\"\(fixed(left + plotWidth, places: 1))\" y2=\"\(fixed(top + plotHeight, places: 1))\" stroke=\"#000\"/>\n"
        for (s, entry) in series.enumerated() {
            let ly = top + 10 + Double(s) * 18
            out += "<rect x=\"\(fixed(left + plotWidth + 12, places: 1))\" y=\"\(fixed(ly - 9, places: 1))\" width=\"12\" height=\"12\" fill=\"\(BarChart.palette[s % BarChart.palette.count])\"/>\n"
            out += "<text x=\"\(fixed(left + plotWidth + 30, places: 1))\" y=\"\(fixed(ly + 1, places: 1))\" font-size=\"12\">\(BarChart.escape(entry.name))</text>\n"
        }
        return out + "</g>\n"
    }

    /// Several charts stacked in one SVG document, with a caption line under them.
    static func document(_ charts: [BarChart], caption: String, width: Double = 820, chartHeight: Double = 330) -> String {
        let height = chartHeight * Double(charts.count) + 40
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"sans-serif\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        for (i, chart) in charts.enumerated() { out += chart.svg(x: 0, y: chartHeight * Double(i), width: width, height: chartHeight) }
        out += "<text x=\"10\" y=\"\(Int(height - 14))\" font-size=\"11\" fill=\"#555\">\(escape(caption))</text>\n"
        return out + "</svg>\n"
    }
}

extension String {
    func replacingAll(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
