import Glibc

/// A chart that draws itself as an SVG group, for `bench backends --svg`.
protocol Chart {
    /// The chart as an SVG group placed at (x, y), `width` × `height`.
    func svg(x: Double, y: Double, width: Double, height: Double) -> String
}

/// Grouped bar charts as SVG, for `bench backends --svg`: one group per category (a frame
/// size), one bar per series (a backend), a labelled value axis from 0, the median as the bar
/// and the min–max range as a whisker. Plain SVG 1.1 that browsers and rsvg render.
struct BarChart: Chart {
    struct Series {
        var name: String
        /// Per category: (median, min, max), or nil where there is no value.
        var values: [(median: Double, min: Double, max: Double)?]
        /// The series' colour (from a `SeriesColours` shared by every panel of a document); nil:
        /// the palette by position.
        var colour: String? = nil
    }

    var title: String
    var valueLabel: String
    var categories: [String]
    var series: [Series]

    /// Room on the right for the legend (series names such as "vhost interrupt ring 256: worker").
    static let legendWidth = 290.0

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
        return value == value.rounded() || value >= 100 ? String(Int(value.rounded())) : fixed(value, places: value >= 10 ? 1 : 2)
    }

    static func escape(_ text: String) -> String {
        text.replacingAll("&", "&amp;").replacingAll("<", "&lt;").replacingAll(">", "&gt;")
    }

    /// The chart as an SVG group placed at (x, y), `width` × `height`.
    func svg(x: Double, y: Double, width: Double, height: Double) -> String {
        let left = 70.0, right = BarChart.legendWidth, top = 34.0, bottom = 42.0
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
                let colour = entry.colour ?? BarChart.palette[s % BarChart.palette.count]
                out += "<rect x=\"\(fixed(bx, places: 1))\" y=\"\(fixed(yPos(value.median), places: 1))\" width=\"\(fixed(barWidth * 0.92, places: 1))\" height=\"\(fixed(plotHeight * value.median / axisTop, places: 1))\" fill=\"\(colour)\"><title>\(BarChart.escape(entry.name)) \(BarChart.escape(category)): \(BarChart.label(value.median))</title></rect>\n"
                let cx = bx + barWidth * 0.46
                out += "<line x1=\"\(fixed(cx, places: 1))\" y1=\"\(fixed(yPos(value.min), places: 1))\" x2=\"\(fixed(cx, places: 1))\" y2=\"\(fixed(yPos(value.max), places: 1))\" stroke=\"#333\"/>\n"
                out += "<text x=\"\(fixed(cx, places: 1))\" y=\"\(fixed(yPos(value.max) - 4, places: 1))\" text-anchor=\"middle\" font-size=\"10\">\(BarChart.label(value.median))</text>\n"
            }
        }
        out += "<line x1=\"\(fixed(left, places: 1))\" y1=\"\(fixed(top + plotHeight, places: 1))\" x2=\"\(fixed(left + plotWidth, places: 1))\" y2=\"\(fixed(top + plotHeight, places: 1))\" stroke=\"#000\"/>\n"
        for (s, entry) in series.enumerated() {
            let ly = top + 10 + Double(s) * 18
            out += "<rect x=\"\(fixed(left + plotWidth + 12, places: 1))\" y=\"\(fixed(ly - 9, places: 1))\" width=\"12\" height=\"12\" fill=\"\(entry.colour ?? BarChart.palette[s % BarChart.palette.count])\"/>\n"
            out += "<text x=\"\(fixed(left + plotWidth + 30, places: 1))\" y=\"\(fixed(ly + 1, places: 1))\" font-size=\"12\">\(BarChart.escape(entry.name))</text>\n"
        }
        return out + "</g>\n"
    }

    /// Several charts stacked in one SVG document, with a caption line under them.
    static func document(_ charts: [any Chart], caption: String, width: Double = 1000, chartHeight: Double = 330) -> String {
        let height = chartHeight * Double(charts.count) + 40
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"sans-serif\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        for (i, chart) in charts.enumerated() { out += chart.svg(x: 0, y: chartHeight * Double(i), width: width, height: chartHeight) }
        out += "<text x=\"10\" y=\"\(Int(height - 14))\" font-size=\"11\" fill=\"#555\">\(escape(caption))</text>\n"
        return out + "</svg>\n"
    }
}

/// One colour per series across every panel of a document: a series keeps the colour it got
/// where it first appeared (the tap path is not orange in one panel and the vhost worker in the
/// next). A series derived from another (a backend's worker CPU beside its driver CPU) takes a
/// lighter tint of that series' colour, never another series' colour.
struct SeriesColours {
    private var keys: [String] = []

    /// The colour of `key`, assigned in order of first request.
    mutating func colour(for key: String) -> String {
        if let index = keys.firstIndex(of: key) { return BarChart.palette[index % BarChart.palette.count] }
        keys.append(key)
        return BarChart.palette[(keys.count - 1) % BarChart.palette.count]
    }

    /// `colour` (#rrggbb) mixed halfway with white.
    static func tint(_ colour: String) -> String {
        let digits = Array(colour.dropFirst())
        guard colour.first == "#", digits.count == 6 else { return colour }
        var out = "#"
        for i in stride(from: 0, to: 6, by: 2) {
            guard let value = Int(String(digits[i..<i + 2]), radix: 16) else { return colour }
            let mixed = (value + 255) / 2
            out += (mixed < 16 ? "0" : "") + String(mixed, radix: 16)
        }
        return out
    }
}

extension String {
    func replacingAll(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

/// Cumulative distributions as SVG lines: x is the value (a latency) on a logarithmic axis (tails
/// span decades), y the share of samples at or below it, one line per series.
struct DistributionChart: Chart {
    struct Series {
        var name: String
        /// (value, percentile 0–100) points in increasing order.
        var points: [(value: Double, percentile: Double)]
        /// As `BarChart.Series.colour`.
        var colour: String? = nil
    }

    var title: String
    var valueLabel: String
    var series: [Series]

    func svg(x: Double, y: Double, width: Double, height: Double) -> String {
        let left = 70.0, right = BarChart.legendWidth, top = 34.0, bottom = 42.0
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        let values = series.flatMap { $0.points.map(\.value) }.filter { $0 > 0 }
        // Whole decades around the values: 10^low ... 10^high.
        let low = (log10(values.min() ?? 1)).rounded(.down), high = max((log10(values.max() ?? 10)).rounded(.up), low + 1)
        func xPos(_ v: Double) -> Double { left + plotWidth * (log10(max(v, pow(10, low))) - low) / (high - low) }
        func yPos(_ p: Double) -> Double { top + plotHeight * (1 - p / 100) }
        var out = "<g transform=\"translate(\(fixed(x, places: 1)),\(fixed(y, places: 1)))\">\n"
        out += "<text x=\"\(fixed(width / 2, places: 1))\" y=\"20\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">\(BarChart.escape(title))</text>\n"
        for percentile in stride(from: 0.0, through: 100, by: 25) {
            let ty = yPos(percentile)
            out += "<line x1=\"\(fixed(left, places: 1))\" y1=\"\(fixed(ty, places: 1))\" x2=\"\(fixed(left + plotWidth, places: 1))\" y2=\"\(fixed(ty, places: 1))\" stroke=\"#ddd\"/>\n"
            out += "<text x=\"\(fixed(left - 6, places: 1))\" y=\"\(fixed(ty + 4, places: 1))\" text-anchor=\"end\" font-size=\"11\">\(Int(percentile))%</text>\n"
        }
        for decade in stride(from: low, through: high, by: 1) {
            for multiple in [1.0, 2.0, 5.0] where decade < high || multiple == 1 {
                let tick = multiple * pow(10, decade), tx = xPos(tick)
                out += "<line x1=\"\(fixed(tx, places: 1))\" y1=\"\(fixed(top, places: 1))\" x2=\"\(fixed(tx, places: 1))\" y2=\"\(fixed(top + plotHeight, places: 1))\" stroke=\"\(multiple == 1 ? "#ccc" : "#eee")\"/>\n"
                out += "<text x=\"\(fixed(tx, places: 1))\" y=\"\(fixed(top + plotHeight + 16, places: 1))\" text-anchor=\"middle\" font-size=\"11\">\(BarChart.label(tick))</text>\n"
            }
        }
        out += "<text x=\"\(fixed(left + plotWidth / 2, places: 1))\" y=\"\(fixed(top + plotHeight + 34, places: 1))\" text-anchor=\"middle\" font-size=\"12\">\(BarChart.escape(valueLabel))</text>\n"
        out += "<text transform=\"translate(16,\(fixed(top + plotHeight / 2, places: 1))) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">share of round trips at or below</text>\n"
        for (s, entry) in series.enumerated() where !entry.points.isEmpty {
            let colour = entry.colour ?? BarChart.palette[s % BarChart.palette.count]
            // A step line: each value holds its percentile until the next value.
            var path = "M \(fixed(xPos(entry.points[0].value), places: 1)) \(fixed(yPos(0), places: 1))"
            for point in entry.points {
                path += " H \(fixed(xPos(point.value), places: 1)) V \(fixed(yPos(point.percentile), places: 1))"
            }
            out += "<path d=\"\(path)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\"><title>\(BarChart.escape(entry.name))</title></path>\n"
            let ly = top + 10 + Double(s) * 18
            out += "<rect x=\"\(fixed(left + plotWidth + 12, places: 1))\" y=\"\(fixed(ly - 9, places: 1))\" width=\"12\" height=\"12\" fill=\"\(colour)\"/>\n"
            out += "<text x=\"\(fixed(left + plotWidth + 30, places: 1))\" y=\"\(fixed(ly + 1, places: 1))\" font-size=\"12\">\(BarChart.escape(entry.name))</text>\n"
        }
        out += "<line x1=\"\(fixed(left, places: 1))\" y1=\"\(fixed(top + plotHeight, places: 1))\" x2=\"\(fixed(left + plotWidth, places: 1))\" y2=\"\(fixed(top + plotHeight, places: 1))\" stroke=\"#000\"/>\n"
        return out + "</g>\n"
    }
}
